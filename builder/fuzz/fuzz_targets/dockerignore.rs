//! A pushed `.dockerignore` and context paths: the first line of the input is the path list
//! (`|`-separated), the rest the file. Neither parsing nor matching (`*`, `?`, `[...]`, `\`
//! escapes, `**`) panics or runs away on any pattern.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_builder::pipeline::dockerignore::Ignore;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (paths, file) = text.split_once('\n').unwrap_or((text, ""));
    let ignore = Ignore::parse(file);
    for path in paths.split('|').take(16) {
        let _ = ignore.excluded(path);
    }
});
