//! Feeds arbitrary bytes to the whole stack-file front end as a stack file, an override file and a `.env`.
#![no_main]

use std::path::Path;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use swarm_specs::loader::Files;
use swarm_specs::LoadOptions;

struct Memory<'a> {
    stack: &'a [u8],
    env: &'a [u8],
}

impl Files for Memory<'_> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match path.file_name().and_then(|n| n.to_str()) {
            Some("stack.yml") | Some("override.yml") => Ok(self.stack.to_vec()),
            Some(".env") => Ok(self.env.to_vec()),
            _ => Ok(b"content".to_vec()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let files = Memory { stack: &data[..split], env: data.get(split + 1..).unwrap_or(&[]) };
    let options = LoadOptions {
        files: vec![PathBuf::from("/fuzz/stack.yml"), PathBuf::from("/fuzz/override.yml")],
        stack: Some("fuzz".into()),
        ..Default::default()
    };
    let _ = swarm_specs::load(&options, &files);
});
