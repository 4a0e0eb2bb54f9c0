//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`) with the real encoders.
//! Run from the repo root: `cargo run --example fuzz_seeds`.

fn main() -> std::io::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let written = eventpipe::fuzzing::seeds::write_corpus(repo, &repo.join("fuzz/corpus"))?;
    println!("wrote {written} seed files under fuzz/corpus/");
    Ok(())
}
