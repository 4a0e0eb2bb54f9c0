//! The schema registry: every `schemas/<name>/<major>.json` compiled once at start-up.
//!
//! An event names its schema as `<name>/<major>`. Compatible changes edit the file of that major;
//! breaking changes add a new major, so old clients keep validating against what they were built
//! for. Each schema may list valid payloads in the standard `examples` keyword; `schemas check`
//! validates them, so a schema edit that breaks its own examples fails in CI.
//!
//! The same directory may also hold schemas in the Iglu static-repository layout
//! (`<vendor>/<name>/jsonschema/<M-R-A>`, Snowplow's): see `iglu` for how they map to ids and topics.

pub mod iglu;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

/// A compiled schema and where it routes.
pub struct Schema {
    pub name: Arc<str>,
    pub major: u32,
    /// `name/major`, as clients write it.
    pub id: Arc<str>,
    validator: jsonschema::Validator,
    examples: Vec<Value>,
    /// Read from an Iglu layout (`iglu`): `id` is its Iglu URI, `examples` are optional.
    pub iglu: bool,
}

/// The first violation found in an event's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// JSON pointer into the payload ("" for the payload itself).
    pub path: String,
    pub message: String,
}

impl Schema {
    /// Validates a payload; on failure returns the first violation.
    pub fn validate(&self, data: &Value) -> Result<(), Violation> {
        if self.validator.is_valid(data) {
            return Ok(());
        }
        let err = self
            .validator
            .iter_errors(data)
            .next()
            .map(|e| Violation {
                path: e.instance_path.to_string(),
                message: truncate(e.to_string(), 300),
            })
            .unwrap_or_else(|| Violation {
                path: String::new(),
                message: "payload does not match the schema".into(),
            });
        Err(err)
    }

    pub fn examples(&self) -> &[Value] {
        &self.examples
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Why the schema directory cannot be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no schemas found under {0} (expected <dir>/<name>/<major>.json or <dir>/<vendor>/<name>/jsonschema/<M-R-A>)")]
    Empty(PathBuf),
}

/// All schemas, by `name/major`.
#[derive(Default)]
pub struct Registry {
    by_id: HashMap<String, Arc<Schema>>,
    /// Iglu `vendor.name/model` -> the model's highest revision (also in `by_id` by its URI).
    iglu_models: HashMap<String, Arc<Schema>>,
}

impl Registry {
    /// Loads and compiles every schema under `dir`.
    pub fn load(dir: &Path) -> Result<Registry, SchemaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SchemaError::Io { path, source }
        };
        let mut by_id = HashMap::new();
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(dir))?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name_dir = entry.path();
            if !name_dir.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if iglu::is_vendor_dir(&name_dir)? {
                for schema in iglu::load_vendor(&name_dir)? {
                    by_id.insert(schema.id.to_string(), Arc::new(schema));
                }
                continue;
            }
            if !valid_name(&name) {
                return Err(SchemaError::Invalid {
                    path: name_dir,
                    message: "schema names are lower-case letters, digits and '_'".into(),
                });
            }
            for file in std::fs::read_dir(&name_dir).map_err(io(&name_dir))? {
                let path = file.map_err(io(&name_dir))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let major: u32 = match stem.parse() {
                    Ok(m) if m > 0 && !stem.starts_with('0') => m,
                    _ => {
                        return Err(SchemaError::Invalid {
                            path,
                            message:
                                "schema files are named <major>.json, major a positive integer"
                                    .into(),
                        })
                    }
                };
                let schema = compile(&path, &name, major)?;
                by_id.insert(schema.id.to_string(), Arc::new(schema));
            }
        }
        if by_id.is_empty() {
            return Err(SchemaError::Empty(dir.to_owned()));
        }
        Ok(Registry::with_iglu_models(by_id))
    }

    /// Builds a registry from in-memory schemas (tests, embedded defaults).
    pub fn from_values(schemas: Vec<(&str, u32, Value)>) -> Result<Registry, SchemaError> {
        let mut by_id = HashMap::new();
        for (name, major, doc) in schemas {
            let path = PathBuf::from(format!("<memory>/{name}/{major}.json"));
            let schema = compile_value(&path, name, major, doc)?;
            by_id.insert(schema.id.to_string(), Arc::new(schema));
        }
        Ok(Registry::with_iglu_models(by_id))
    }

    /// Indexes each Iglu model's highest revision under `vendor.name/model`.
    fn with_iglu_models(by_id: HashMap<String, Arc<Schema>>) -> Registry {
        let mut latest: HashMap<String, (iglu::IgluKey, Arc<Schema>)> = HashMap::new();
        for schema in by_id.values().filter(|s| s.iglu) {
            let Some(key) = iglu::IgluKey::parse_uri(&schema.id) else {
                continue;
            };
            let newer =
                |old: &iglu::IgluKey| (key.revision, key.addition) > (old.revision, old.addition);
            match latest.get(&key.model_id()) {
                Some((old, _)) if !newer(old) => {}
                _ => {
                    latest.insert(key.model_id(), (key, schema.clone()));
                }
            }
        }
        let iglu_models = latest.into_iter().map(|(id, (_, s))| (id, s)).collect();
        Registry { by_id, iglu_models }
    }

    /// A schema by `name/major`, or by Iglu URI (`iglu:vendor/name/jsonschema/M-R-A`, that exact
    /// revision); `vendor.name/model` gives an Iglu model's highest revision.
    pub fn get(&self, id: &str) -> Option<&Arc<Schema>> {
        self.by_id.get(id).or_else(|| self.iglu_models.get(id))
    }

    /// Distinct schema names, sorted (one topic each).
    pub fn names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<_> = self.by_id.values().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// All schemas, sorted by id.
    pub fn schemas(&self) -> Vec<Arc<Schema>> {
        let mut all: Vec<_> = self.by_id.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn compile(path: &Path, name: &str, major: u32) -> Result<Schema, SchemaError> {
    compile_value(path, name, major, read_json(path)?)
}

/// A schema file's JSON, with errors naming the file.
pub(crate) fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SchemaError::Invalid {
        path: path.to_owned(),
        message: format!("not JSON: {e}"),
    })
}

fn compile_value(path: &Path, name: &str, major: u32, doc: Value) -> Result<Schema, SchemaError> {
    let invalid = |message: String| SchemaError::Invalid {
        path: path.to_owned(),
        message,
    };
    let validator = jsonschema::draft202012::new(&doc)
        .map_err(|e| invalid(format!("not a valid draft 2020-12 schema: {e}")))?;
    let examples = match doc.get("examples") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(invalid("`examples` must be an array".into())),
    };
    Ok(Schema {
        name: name.into(),
        major,
        id: format!("{name}/{major}").into(),
        validator,
        examples,
        iglu: false,
    })
}

/// Result of `schemas check`: one line per problem.
pub fn check(dir: &Path) -> Result<(usize, usize), Vec<String>> {
    let registry = Registry::load(dir).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let mut examples = 0;
    for schema in registry.schemas() {
        // Iglu repositories carry no examples: they are checked when present.
        if schema.examples().is_empty() && !schema.iglu {
            problems.push(format!(
                "{}: no `examples`; add at least one valid payload",
                schema.id
            ));
        }
        for (i, example) in schema.examples().iter().enumerate() {
            examples += 1;
            if let Err(v) = schema.validate(example) {
                problems.push(format!(
                    "{}: example {i} fails at '{}': {}",
                    schema.id, v.path, v.message
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok((registry.len(), examples))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::from_values(vec![(
            "page_view",
            1,
            json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "format": "uri"}, "n": {"type": "integer"}}}),
        )])
        .unwrap()
    }

    #[test]
    fn violation_names_the_failing_path() {
        let r = registry();
        let s = r.get("page_view/1").unwrap();
        assert!(s.validate(&json!({"url": "https://x"})).is_ok());
        let v = s
            .validate(&json!({"url": "https://x", "n": "seven"}))
            .unwrap_err();
        assert_eq!(v.path, "/n");
        let v = s.validate(&json!({})).unwrap_err();
        assert_eq!(v.path, "");
        assert!(v.message.contains("url"), "{}", v.message);
    }

    #[test]
    fn shipped_schemas_compile_and_their_examples_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let (schemas, examples) = check(&dir).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        assert!(schemas >= 5 && examples >= schemas);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/1.json"), "{\"type\": 12}").unwrap();
        let err = Registry::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("x/1.json"), "{err}");
        std::fs::write(dir.path().join("x/1.json"), "{}").unwrap();
        std::fs::write(dir.path().join("x/v2.json"), "{}").unwrap();
        let err = Registry::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("v2.json"), "{err}");
    }
}
