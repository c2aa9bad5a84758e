//! Build secrets: present at `/run/secrets/<name>` during every `RUN` step, never in the image.
//!
//! Secrets need BuildKit's secret mounts (tmpfs mounts that are not part of any layer). A
//! service with secrets is therefore built through the Engine's BuildKit (bollard's gRPC session
//! driver), with [`mount_secrets`] adding `--mount=type=secret,id=<name>,target=/run/secrets/<name>`
//! to every `RUN` instruction, which is balena's semantics (every step can read every secret).
//! The secret files live in a 0700 temporary directory only while the build runs.

/// Adds a secret mount for each of `names` to every `RUN` instruction of `dockerfile`.
pub fn mount_secrets(dockerfile: &str, names: &[String]) -> String {
    let mounts: String = names
        .iter()
        .map(|n| format!("--mount=type=secret,id={n},target=/run/secrets/{n} "))
        .collect();
    let mut out = String::with_capacity(dockerfile.len() + 256);
    let mut continued = false;
    for line in dockerfile.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let starts_instruction = !continued && !trimmed.starts_with('#');
        if starts_instruction
            && trimmed.len() > 3
            && trimmed[..3].eq_ignore_ascii_case("run")
            && trimmed.as_bytes()[3].is_ascii_whitespace()
        {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(indent);
            out.push_str(&trimmed[..3]);
            out.push(' ');
            out.push_str(&mounts);
            out.push_str(trimmed[3..].trim_start());
        } else {
            out.push_str(line);
        }
        let body = line.trim_end_matches(['\n', '\r']).trim_end();
        let is_comment = trimmed.starts_with('#');
        if !is_comment {
            continued = body.ends_with('\\');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_gets_the_mounts_and_nothing_else_changes() {
        let df = "FROM busybox\nrun echo a \\\n  && echo run b\n# RUN not this\nRUN\tcat /run/secrets/k\nCOPY run /run\n";
        let out = mount_secrets(df, &["k".into()]);
        assert_eq!(
            out,
            "FROM busybox\nrun --mount=type=secret,id=k,target=/run/secrets/k echo a \\\n  && echo run b\n# RUN not this\nRUN --mount=type=secret,id=k,target=/run/secrets/k cat /run/secrets/k\nCOPY run /run\n"
        );
    }
}
