//! `-auto` end to end: over loopback, and over a 100 Mbit/s link between
//! two network namespaces that the test makes and removes itself.
//!
//! The namespace test needs root and the `ip` and `tc` tools (iproute2); it
//! says why and passes where it cannot run. It talks only to the two
//! addresses it puts inside its own namespaces (192.168.231.1 and .2 on a
//! veth pair); nothing outside them sees a packet.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Text-like data: compresses about 3:1, like a file system image.
fn compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(len, seed);
    for b in &mut v {
        *b = b'a' + (*b & 15);
    }
    v
}

/// A server (`bsync -p 0 ...` under `prefix`) and the port it printed.
fn serve(prefix: &[&str], bind: &str, dst: &Path) -> (Child, u16) {
    let (program, args) = match prefix.split_first() {
        Some((p, rest)) => (p.to_string(), rest.to_vec()),
        None => (env!("CARGO_BIN_EXE_bsync").to_string(), vec![]),
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !prefix.is_empty() {
        cmd.arg(env!("CARGO_BIN_EXE_bsync"));
    }
    let mut child = cmd
        .args(["-q", "-p", "0", "-i", bind, "-f"])
        .arg(dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    (child, port)
}

/// The `auto: ...` line of a client's stderr.
fn choice(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("auto: "))
        .unwrap_or_else(|| panic!("no auto: line in\n{stderr}"))
}

#[test]
fn auto_over_loopback_syncs_and_says_what_it_chose() {
    let tmp = TempDir::new("auto-loopback");
    let (src, dst) = (tmp.join("src"), tmp.join("dst"));
    write_file(&src, &compressible(6 << 20, 1));
    write_file(&dst, &compressible(5 << 20, 2));
    let (mut server, port) = serve(&[], "127.0.0.1", &dst);
    let err = run_ok(
        bsync()
            .args(["-auto", "-f"])
            .arg(&src)
            .args(["-r", &format!("127.0.0.1:{port}")]),
    );
    assert!(server.wait().unwrap().success());
    assert_same(&src, &dst);
    let line = choice(&err);
    assert!(line.contains("round trip"), "{line}");
    assert!(line.contains("-b ") && line.contains("-L "), "{line}");
    assert_eq!(err.lines().filter(|l| l.starts_with("auto: ")).count(), 1);
}

#[test]
fn auto_refuses_the_settings_it_chooses() {
    for flag in [
        &["-b", "1M"][..],
        &["-w", "2"],
        &["-prefetch", "8"],
        &["-L", "fast"],
        &["-n"],
    ] {
        let err = run_status(bsync().args(["-auto", "-r", "127.0.0.1:1"]).args(flag), 2);
        assert!(err.contains("-auto chooses"), "{flag:?}: {err}");
        assert!(err.contains(flag[0]), "{flag:?}: {err}");
    }
}

/// Two network namespaces joined by a veth pair, the client's side
/// throttled with `tc ... tbf rate 100mbit`; removed on drop.
struct Link {
    client: String,
    server: String,
}

const CLIENT_ADDR: &str = "192.168.231.1";
const SERVER_ADDR: &str = "192.168.231.2";

impl Link {
    fn new() -> Result<Link, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root".into());
        }
        for tool in ["ip", "tc"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!("no `{tool}` (apt-get install iproute2)"));
            }
        }
        let id = std::process::id();
        let link = Link {
            client: format!("bsync-auto-{id}-c"),
            server: format!("bsync-auto-{id}-s"),
        };
        link.ip(&["netns", "add", &link.client])?;
        link.ip(&["netns", "add", &link.server])?;
        link.ip(&[
            "link",
            "add",
            "bsc",
            "netns",
            &link.client,
            "type",
            "veth",
            "peer",
            "name",
            "bss",
            "netns",
            &link.server,
        ])?;
        for (ns, dev, addr) in [
            (&link.client, "bsc", CLIENT_ADDR),
            (&link.server, "bss", SERVER_ADDR),
        ] {
            link.ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            link.ip(&["-n", ns, "link", "set", dev, "up"])?;
            link.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        link.run(
            "ip",
            &[
                "netns",
                "exec",
                &link.client,
                "tc",
                "qdisc",
                "add",
                "dev",
                "bsc",
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "32kbit",
                "latency",
                "50ms",
            ],
        )?;
        Ok(link)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        self.run("ip", args)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the
        // pair.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Over a 100 Mbit/s link the probe sees the link as the bottleneck and
/// moves away from the defaults: smaller blocks (the level depends on how
/// the data compresses; `auto::tests` covers that rule).
#[test]
fn auto_over_a_100_mbit_link_compresses_harder() {
    let link = match Link::new() {
        Ok(l) => l,
        Err(why) => {
            return common::skip(&format!(
                "{why} \
                 (needs root, ip and tc to make two network namespaces)"
            ));
        }
    };
    let tmp = TempDir::new("auto-veth");
    let (src, dst) = (tmp.join("src"), tmp.join("dst"));
    write_file(&src, &compressible(8 << 20, 3));
    let (mut server, port) = serve(&["ip", "netns", "exec", &link.server], SERVER_ADDR, &dst);
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", &link.client])
        .arg(env!("CARGO_BIN_EXE_bsync"))
        .args(["-auto", "-f"])
        .arg(&src)
        .args(["-r", &format!("{SERVER_ADDR}:{port}")])
        .stdin(Stdio::null());
    let err = run_ok(&mut client);
    assert!(server.wait().unwrap().success());
    assert_same(&src, &dst);
    let line = choice(&err);
    assert!(line.contains("the link is the bottleneck"), "{line}");
    assert!(line.contains("-b 1.0MiB"), "{line}");
    // The measured rate is about what tbf allows.
    let mbit: f64 = line
        .split(" Mbit/s")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no link rate in {line}"));
    assert!((50.0..=150.0).contains(&mbit), "{line}");
}

/// Issue 19, item 3: -bwlimit is the link's ceiling for -auto, whose line
/// then names the link as the bottleneck and writes ratios as N:1.
#[test]
fn auto_takes_bwlimit_as_the_link() {
    let tmp = TempDir::new("auto-bwlimit");
    let (src, dst) = (tmp.join("src"), tmp.join("dst"));
    write_file(&src, &compressible(2 << 20, 3));
    let (mut server, port) = serve(&[], "127.0.0.1", &dst);
    let err = run_ok(
        bsync()
            .args(["-auto", "-bwlimit", "5M", "-f"])
            .arg(&src)
            .args(["-r", &format!("127.0.0.1:{port}")]),
    );
    assert!(server.wait().unwrap().success());
    assert_same(&src, &dst);
    let line = choice(&err);
    assert!(line.contains("by -bwlimit"), "{line}");
    assert!(line.contains("the link is the bottleneck"), "{line}");
    assert!(line.contains(":1)") && !line.contains("ratio"), "{line}");
}
