//! `xiaomaolv mcp add|ls|test|rm` on a real config file, with server-everything.

use std::process::Command;

use crate::common::binary;
use crate::common::mcp_servers::everything_script;

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("XIAOMAOLV_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

const COMMENTED: &str = "# my gateway\n[app]\nbind = \"127.0.0.1:8080\"  # keep this port\n\n\
[providers.local]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:8081/v1\"\nmodel = \"m\"\n";

#[test]
fn add_ls_test_rm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, COMMENTED).unwrap();
    let config = path.to_str().unwrap();
    let script = everything_script();

    let (code, _, stderr) = run(
        dir.path(),
        &[
            "mcp",
            "add",
            "everything",
            "--config",
            config,
            "--env",
            "EXAMPLE=1",
            "--",
            "node",
            &script,
            "stdio",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(
        dir.path(),
        &[
            "mcp",
            "add",
            "search",
            "--config",
            config,
            "--transport",
            "http",
            "--url",
            "http://127.0.0.1:8787/mcp",
            "--header",
            "Authorization: Bearer ${SEARCH_TOKEN:-}",
        ],
    );
    assert_eq!(code, 0, "{stderr}");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# my gateway\n"), "{text}");
    assert!(
        text.contains("bind = \"127.0.0.1:8080\"  # keep this port"),
        "{text}"
    );
    assert!(text.contains("[mcp.servers.everything]"), "{text}");
    assert!(text.contains("env = { EXAMPLE = \"1\" }"), "{text}");
    assert!(
        text.contains("headers = { Authorization = \"Bearer ${SEARCH_TOKEN:-}\" }"),
        "{text}"
    );

    let (code, stdout, _) = run(dir.path(), &["mcp", "ls", "--config", config]);
    assert_eq!(code, 0);
    assert!(stdout.contains("everything\tstdio\t\"node\""), "{stdout}");
    assert!(
        stdout.contains("search\thttp\t\"http://127.0.0.1:8787/mcp\""),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(
        dir.path(),
        &["mcp", "test", "everything", "--config", config],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tools/list round trip"), "{stdout}");
    assert!(stdout.contains("get-sum"), "{stdout}");

    // Nothing listens at the search server's address. The one-shot test prints why it failed,
    // without the hub's warning that it will retry.
    let (code, _, stderr) = run(dir.path(), &["mcp", "test", "search", "--config", config]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("server `search` is not usable"), "{stderr}");
    assert!(!stderr.contains("will retry"), "{stderr}");

    let (code, _, stderr) = run(dir.path(), &["mcp", "rm", "search", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("mcp.servers.search"), "{text}");
    assert!(text.contains("# keep this port"), "{text}");

    let (code, _, stderr) = run(dir.path(), &["check-config", config]);
    assert_eq!(code, 0, "the edited file is valid: {stderr}");
}

#[test]
fn add_rejects_duplicates_and_mixed_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["mcp", "add", "a", "--url", "http://h/mcp", "--", "cmd"],
            "--url, not a command",
        ),
        (
            &["mcp", "add", "a", "--url", "http://h/mcp", "--env", "K=V"],
            "--env only applies to stdio",
        ),
        (
            &["mcp", "add", "a", "--header", "K: V", "--", "cmd"],
            "--header only applies to http",
        ),
        (&["mcp", "add", "a"], "needs its command"),
        (&["mcp", "add", "a", "--transport", "http"], "needs --url"),
        (
            &["mcp", "add", "a", "--env", "novalue", "--", "cmd"],
            "KEY=VALUE",
        ),
        (&["mcp", "add", "a__b", "--", "cmd"], "invalid server name"),
        (
            &["mcp", "add", "a", "--transport", "http", "--url", "ftp://h"],
            "not an http(s) URL",
        ),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = run(dir.path(), args);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("xiaomaolv.toml").exists(),
        "nothing written on error"
    );

    let (code, _, stderr) = run(dir.path(), &["mcp", "add", "tools", "--", "cmd"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        dir.path().join("xiaomaolv.toml").exists(),
        "created from the embedded defaults"
    );
    let (code, _, stderr) = run(dir.path(), &["mcp", "add", "tools", "--", "other"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = run(dir.path(), &["mcp", "rm", "missing"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no server `missing`"), "{stderr}");
    let (code, _, stderr) = run(dir.path(), &["mcp", "test", "missing"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no server `missing`"), "{stderr}");
}

#[test]
fn concurrent_adds_keep_every_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.toml");
    std::fs::write(&path, COMMENTED).unwrap();
    let config = path.to_str().unwrap().to_owned();
    let children: Vec<_> = (0..12)
        .map(|i| {
            Command::new(binary())
                .args([
                    "mcp",
                    "add",
                    &format!("s{i}"),
                    "--config",
                    &config,
                    "--",
                    "echo",
                    "hi",
                ])
                .output()
        })
        .collect();
    for child in children {
        let output = child.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (code, stdout, _) = run(dir.path(), &["mcp", "ls", "--config", &config]);
    assert_eq!(code, 0);
    for i in 0..12 {
        assert!(
            stdout.contains(&format!("s{i}\tstdio")),
            "s{i} missing:\n{stdout}"
        );
    }
}

#[cfg(unix)]
#[test]
fn edits_keep_permissions_and_follow_symlinks() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    std::fs::write(&real, COMMENTED).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let (code, _, stderr) = run(
        dir.path(),
        &[
            "mcp",
            "add",
            "tools",
            "--config",
            link.to_str().unwrap(),
            "--env",
            "KEY=secret",
            "--",
            "cmd",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("[mcp.servers.tools]")
    );
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn add_creates_a_file_that_says_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.toml");
    let config = path.to_str().unwrap();
    let (code, _, stderr) = run(
        dir.path(),
        &[
            "mcp",
            "add",
            "tools",
            "--config",
            config,
            "--",
            "node",
            "server.js",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# xiaomaolv config, created by `xiaomaolv mcp add`"),
        "{text}"
    );
    assert!(!text.contains("Embedded defaults"), "{text}");
    assert!(text.contains("[mcp.servers.tools]"), "{text}");
}
