//! Schemas laid out as an Iglu static repository, read beside the native ones, so a Snowplow
//! team's existing schema repository works as is:
//!
//! ```text
//! <dir>/<vendor>/<name>/jsonschema/<model>-<revision>-<addition>    e.g. schemas/com.acme/checkout/jsonschema/1-0-2
//! ```
//!
//! Each file (no extension) is a self-describing JSON Schema: `self: {vendor, name, format,
//! version}` must match its path (as `igluctl lint` requires). Iglu schemas are written in JSON
//! Schema draft 4 (the Iglu meta-schema extends it), so they are compiled as draft 4 after `self`
//! and `$schema` are taken out; `$ref`s to other files are not followed.
//!
//! How an Iglu schema maps to ours:
//! - Its id is its Iglu URI, `iglu:com.acme/checkout/jsonschema/1-0-2`: an event naming that URI
//!   is validated by exactly that revision, and the URI is the record's `schema` header.
//! - Its name is `<vendor>.<name>` (`com.acme.checkout`) and its major the model (`1`): all
//!   revisions of all models of a schema share the topic `<topic_prefix>com.acme.checkout`, and
//!   the Thrift `Event` carries `schema_name = "com.acme.checkout"`, `schema_major = 1`.
//! - `com.acme.checkout/1` (the native form) resolves to the highest revision of model 1.
//!
//! Topic names: Iglu allows `[A-Za-z0-9_.-]` in vendors and `[A-Za-z0-9_-]` in names, all legal in
//! Kafka topic names; `<vendor>.<name>` may be at most [`MAX_NAME`] characters so that with a
//! topic prefix it stays under Kafka's 249. A native name has no dot, an Iglu one always has
//! one, so the two never share a topic. A top-level directory holding a `<name>/jsonschema/`
//! directory is read as an Iglu vendor, any other as a native schema name (its `<major>.json`
//! files; other files and sub-directories, such as `drafts/`, are ignored).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{Schema, SchemaError};

/// The longest `<vendor>.<name>` accepted (Kafka topic names stop at 249 characters).
pub const MAX_NAME: usize = 200;

/// A parsed Iglu schema key: `iglu:<vendor>/<name>/jsonschema/<model>-<revision>-<addition>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgluKey {
    pub vendor: String,
    pub name: String,
    pub model: u32,
    pub revision: u32,
    pub addition: u32,
}

impl IgluKey {
    /// Parses an Iglu URI; `None` if it is not one (only the `jsonschema` format is known).
    pub fn parse_uri(uri: &str) -> Option<IgluKey> {
        let rest = uri.strip_prefix("iglu:")?;
        let mut parts = rest.split('/');
        let (vendor, name, format, version) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || format != "jsonschema" {
            return None;
        }
        IgluKey::from_parts(vendor, name, version)
    }

    fn from_parts(vendor: &str, name: &str, version: &str) -> Option<IgluKey> {
        let vendor_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        if vendor.is_empty() || name.is_empty() || !vendor.chars().all(vendor_ok) {
            return None;
        }
        if !name.chars().all(name_ok) || vendor.len() + 1 + name.len() > MAX_NAME {
            return None;
        }
        let mut v = version.split('-').map(|n| {
            // Iglu versions are plain decimal numbers without leading zeros or signs.
            (!n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse::<u32>().ok())
            .flatten()
        });
        let (model, revision, addition) = (v.next()??, v.next()??, v.next()??);
        if v.next().is_some() || model == 0 {
            return None;
        }
        Some(IgluKey {
            vendor: vendor.into(),
            name: name.into(),
            model,
            revision,
            addition,
        })
    }

    /// `iglu:vendor/name/jsonschema/M-R-A`.
    pub fn uri(&self) -> String {
        format!(
            "iglu:{}/{}/jsonschema/{}",
            self.vendor,
            self.name,
            self.version()
        )
    }

    pub fn version(&self) -> String {
        format!("{}-{}-{}", self.model, self.revision, self.addition)
    }

    /// Our schema name (and topic suffix): `vendor.name`.
    pub fn schema_name(&self) -> String {
        format!("{}.{}", self.vendor, self.name)
    }

    /// The native id that resolves to the model's latest revision: `vendor.name/model`.
    pub fn model_id(&self) -> String {
        format!("{}/{}", self.schema_name(), self.model)
    }
}

/// Is this top-level directory an Iglu vendor: does it hold a `<name>/jsonschema/` directory?
/// Any other sub-directory (a native schema's `drafts/`, say) leaves it a native schema name.
pub fn is_vendor_dir(dir: &Path) -> Result<bool, SchemaError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SchemaError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry.path().join("jsonschema").is_dir() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Loads every `<vendor>/<name>/jsonschema/<version>` under a vendor directory.
pub fn load_vendor(vendor_dir: &Path) -> Result<Vec<Schema>, SchemaError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SchemaError::Io { path, source }
    };
    let invalid = |path: PathBuf, message: &str| SchemaError::Invalid {
        path,
        message: message.into(),
    };
    let vendor = file_name(vendor_dir);
    let mut out = Vec::new();
    for name_entry in sorted(vendor_dir).map_err(io(vendor_dir))? {
        if !name_entry.is_dir() {
            return Err(invalid(
                name_entry,
                "an Iglu vendor directory holds <name>/jsonschema/<M-R-A> only",
            ));
        }
        let name = file_name(&name_entry);
        for format_dir in sorted(&name_entry).map_err(io(&name_entry))? {
            if file_name(&format_dir) != "jsonschema" || !format_dir.is_dir() {
                return Err(invalid(
                    format_dir,
                    "expected <vendor>/<name>/jsonschema/<M-R-A> (only the jsonschema format is read)",
                ));
            }
            for file in sorted(&format_dir).map_err(io(&format_dir))? {
                let version = file_name(&file);
                let key = IgluKey::from_parts(&vendor, &name, &version).ok_or_else(|| {
                    invalid(
                        file.clone(),
                        "not an Iglu schema path: vendor [A-Za-z0-9_.-], name [A-Za-z0-9_-], \
                         version <model>-<revision>-<addition> (model >= 1), vendor.name at most 200 characters",
                    )
                })?;
                out.push(compile_file(&file, &key)?);
            }
        }
    }
    Ok(out)
}

fn sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn compile_file(path: &Path, key: &IgluKey) -> Result<Schema, SchemaError> {
    compile_value(path, key, super::read_json(path)?)
}

/// Compiles a self-describing JSON Schema whose `self` must equal `key`.
pub fn compile_value(path: &Path, key: &IgluKey, mut doc: Value) -> Result<Schema, SchemaError> {
    let invalid = |message: String| SchemaError::Invalid {
        path: path.to_owned(),
        message,
    };
    let Some(obj) = doc.as_object_mut() else {
        return Err(invalid("an Iglu schema must be a JSON object".into()));
    };
    let declared = obj.remove("self");
    let field = |f: &str| {
        declared
            .as_ref()
            .and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (vendor, name, format, version) = (
        field("vendor"),
        field("name"),
        field("format"),
        field("version"),
    );
    if vendor != key.vendor
        || name != key.name
        || format != "jsonschema"
        || version != key.version()
    {
        return Err(invalid(format!(
            "`self` ({{vendor: {vendor:?}, name: {name:?}, format: {format:?}, version: {version:?}}}) \
             does not match the file's path ({})",
            key.uri()
        )));
    }
    // The Iglu meta-schema URL: not a JSON Schema dialect the validator knows.
    obj.remove("$schema");
    let validator = jsonschema::draft4::new(&doc)
        .map_err(|e| invalid(format!("not a valid draft 4 JSON Schema: {e}")))?;
    let examples = match doc.get("examples") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(invalid("`examples` must be an array".into())),
    };
    Ok(Schema {
        name: key.schema_name().into(),
        major: key.model,
        id: Arc::from(key.uri()),
        validator,
        examples,
        iglu: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uris_parse_and_bad_ones_do_not() {
        let k = IgluKey::parse_uri("iglu:com.acme/checkout/jsonschema/1-0-2").unwrap();
        assert_eq!((k.model, k.revision, k.addition), (1, 0, 2));
        assert_eq!(k.schema_name(), "com.acme.checkout");
        assert_eq!(k.model_id(), "com.acme.checkout/1");
        assert_eq!(k.uri(), "iglu:com.acme/checkout/jsonschema/1-0-2");
        for bad in [
            "com.acme/checkout/jsonschema/1-0-2",
            "iglu:com.acme/checkout/avro/1-0-2",
            "iglu:com.acme/checkout/jsonschema/1-0",
            "iglu:com.acme/checkout/jsonschema/0-0-1",
            "iglu:com.acme/checkout/jsonschema/1-01-0",
            "iglu:com.acme/check.out/jsonschema/1-0-0",
            "iglu:com acme/checkout/jsonschema/1-0-0",
            "iglu:com.acme/checkout/jsonschema/1-0-0/x",
            "iglu:/checkout/jsonschema/1-0-0",
        ] {
            assert!(IgluKey::parse_uri(bad).is_none(), "{bad}");
        }
        let long = format!("iglu:{}/n/jsonschema/1-0-0", "v".repeat(MAX_NAME));
        assert!(IgluKey::parse_uri(&long).is_none());
    }

    #[test]
    fn self_must_match_the_path_and_draft4_keywords_work() {
        let key = IgluKey::parse_uri("iglu:com.acme/checkout/jsonschema/1-0-2").unwrap();
        let doc = |version: &str| {
            json!({
                "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
                "self": {"vendor": "com.acme", "name": "checkout", "format": "jsonschema", "version": version},
                "type": "object",
                "properties": {"total": {"type": "number", "minimum": 0, "exclusiveMinimum": true}},
                "required": ["total"]
            })
        };
        let s = compile_value(Path::new("x"), &key, doc("1-0-2")).unwrap();
        assert_eq!(&*s.id, "iglu:com.acme/checkout/jsonschema/1-0-2");
        assert_eq!((&*s.name, s.major), ("com.acme.checkout", 1));
        assert!(s.validate(&json!({"total": 3})).is_ok());
        // Draft 4's boolean exclusiveMinimum is understood (2020-12 would refuse the schema).
        assert!(s.validate(&json!({"total": 0})).is_err());
        let err = compile_value(Path::new("x"), &key, doc("1-0-1"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }
    #[test]
    fn both_layouts_load_from_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("page_view")).unwrap();
        std::fs::write(
            root.join("page_view/1.json"),
            r#"{"type": "object", "examples": [{}]}"#,
        )
        .unwrap();
        let revision = |version: &str, required: &str| {
            let path = root.join("com.acme/checkout/jsonschema").join(version);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let doc = json!({
                "self": {"vendor": "com.acme", "name": "checkout", "format": "jsonschema", "version": version},
                "type": "object", "required": [required]
            });
            std::fs::write(path, doc.to_string()).unwrap();
        };
        revision("1-0-0", "a");
        revision("1-0-2", "b");
        revision("1-0-10", "c");
        revision("2-0-0", "d");
        let r = super::super::Registry::load(root).unwrap();
        assert_eq!(r.len(), 5);
        let exact = r.get("iglu:com.acme/checkout/jsonschema/1-0-2").unwrap();
        assert!(exact.validate(&json!({"b": 1})).is_ok());
        assert!(exact.validate(&json!({"c": 1})).is_err());
        // The native form names the model's highest revision (1-0-10 > 1-0-2 numerically).
        let latest = r.get("com.acme.checkout/1").unwrap();
        assert_eq!(&*latest.id, "iglu:com.acme/checkout/jsonschema/1-0-10");
        assert_eq!(
            &*r.get("com.acme.checkout/2").unwrap().id,
            "iglu:com.acme/checkout/jsonschema/2-0-0"
        );
        let names: Vec<String> = r.names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["com.acme.checkout", "page_view"]);
        // `schemas check` passes Iglu schemas without examples.
        assert_eq!(super::super::check(root).unwrap(), (5, 1));
        // A file whose `self` disagrees with its path is named.
        std::fs::write(
            root.join("com.acme/checkout/jsonschema/2-0-0"),
            json!({"self": {"vendor": "com.acme", "name": "checkout", "format": "jsonschema", "version": "2-0-1"}}).to_string(),
        )
        .unwrap();
        let err = super::super::Registry::load(root)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("com.acme/checkout/jsonschema/2-0-0"), "{err}");
    }

    #[test]
    fn a_native_schema_with_a_sub_directory_stays_native() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("purchase/drafts")).unwrap();
        std::fs::write(
            root.join("purchase/1.json"),
            r#"{"type": "object", "examples": [{}]}"#,
        )
        .unwrap();
        std::fs::write(root.join("purchase/drafts/2.json"), "{not json").unwrap();
        let r = super::super::Registry::load(root).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.get("purchase/1").is_some());
        assert!(!super::is_vendor_dir(&root.join("purchase")).unwrap());
    }
}
