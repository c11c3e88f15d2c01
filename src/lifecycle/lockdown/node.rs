//! What `lockdown` does on a node, over metalherd's pinned-key SSH
//! sessions: the nftables ruleset that cuts the node off (all but the
//! forensic bastion, and metalherd's own address until it is done), the
//! evidence commands, the hand-over of SSH to the forensic key, and the
//! check from metalherd that the isolation holds.
//!
//! Everything the node runs is a fixed command line; what varies (the
//! forensic key, the ruleset) travels on stdin, and the only values put
//! into a command line are addresses parsed as [`IpAddr`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ssh::{shell_quote, Session};

/// The nftables table lockdown owns on a node.
pub const TABLE: &str = "metalherd_lockdown";

/// How long metalherd's own address stays allowed if lockdown never gets
/// to remove it (killed mid-run): the set's elements expire by themselves.
pub const COLLECTOR_TTL: Duration = Duration::from_secs(2 * 3600);

/// The address the node sees metalherd connect from (`$SSH_CONNECTION`'s
/// first field): the `collector` that may reach it until the seal.
pub async fn collector(session: &Session) -> anyhow::Result<IpAddr> {
    let out = session
        .run(
            "read $SSH_CONNECTION",
            "printf '%s' \"${SSH_CONNECTION%% *}\"",
            None,
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse()
        .with_context(|| format!("$SSH_CONNECTION names no client address: {text:?}"))
}

/// The ruleset `isolate` applies: a table of its own whose input, output
/// and forward chains drop everything but loopback, the bastion (any
/// connection it opens; replies to it) and the addresses in the set
/// `collector` (metalherd, while it collects evidence). Applied with
/// `nft -f -` in one transaction that replaces an earlier version of the
/// table. The chains sit after conntrack (-200), so `ct state` is known,
/// and a drop here is final whatever other tables accept.
pub fn ruleset(bastion: IpAddr, collector: IpAddr, ttl: Duration) -> String {
    let fam = |a: IpAddr| if a.is_ipv4() { "ip" } else { "ip6" };
    let set_type = if collector.is_ipv4() {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    // IPv6 needs neighbour discovery to reach anything at all.
    let nd = if bastion.is_ipv6() || collector.is_ipv6() {
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n"
    } else {
        ""
    };
    let (b, c) = (fam(bastion), fam(collector));
    format!(
        "# metalherd lockdown: only the forensic bastion {bastion} may reach this machine.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tset collector {{\n\
         \t\ttype {set_type}\n\
         \t\tflags timeout\n\
         \t\telements = {{ {collector} timeout {ttl}s }}\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -190; policy drop;\n\
         \t\tiif \"lo\" accept\n\
         {nd}\
         \t\t{b} saddr {bastion} accept\n\
         \t\t{c} saddr @collector accept\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority -190; policy drop;\n\
         \t\toif \"lo\" accept\n\
         {nd}\
         \t\t{b} daddr {bastion} ct state established,related accept\n\
         \t\t{c} daddr @collector ct state established,related accept\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority -190; policy drop;\n\
         \t}}\n\
         }}\n",
        ttl = ttl.as_secs(),
    )
}

/// Applies [`ruleset`] on the node and checks the table is there.
/// Returns the collector address.
pub async fn isolate(session: &Session, bastion: IpAddr) -> anyhow::Result<IpAddr> {
    let collector = collector(session).await?;
    let rules = ruleset(bastion, collector, COLLECTOR_TTL);
    session
        .run(
            "nft -f - (isolate)",
            "sudo nft -f -",
            Some(rules.as_bytes()),
        )
        .await?;
    session
        .run(
            "nft list table (isolate)",
            &format!("sudo nft list table inet {TABLE} >/dev/null"),
            None,
        )
        .await?;
    Ok(collector)
}

/// One evidence command: the file its stdout goes to, and the command.
pub struct Collect {
    pub file: &'static str,
    pub command: &'static str,
}

/// What is collected from every node, in order (the etcd snapshot of a
/// control plane is taken by metalherd itself, see `evidence`). Commands
/// that may fail where a tool or directory is missing still produce their
/// file; the exit status and stderr go to the chain-of-custody log.
pub const COLLECT: &[Collect] = &[
    Collect {
        file: "system.txt",
        command: "sh -c 'hostname; uname -a; date -u +%Y-%m-%dT%H:%M:%SZ; cat /proc/uptime'",
    },
    Collect {
        file: "processes.txt",
        command: "sudo ps auxww",
    },
    Collect {
        file: "sockets.txt",
        command: "sudo ss -tupan",
    },
    Collect {
        file: "mountinfo.txt",
        command: "cat /proc/self/mountinfo",
    },
    Collect {
        file: "journal.txt",
        command: "sudo journalctl -b --no-pager",
    },
    Collect {
        file: "authorized-keys.txt",
        command: "sudo sh -c 'for f in /root/.ssh/authorized_keys* /home/*/.ssh/authorized_keys \
                  /home/*/.ssh/authorized_keys2 /home/*/.ssh/authorized_keys.d/*; do \
                  [ -f \"$f\" ] && { echo \"== $f\"; cat \"$f\"; }; done; true'",
    },
    Collect {
        file: "nftables.txt",
        command: "sudo nft list ruleset",
    },
    Collect {
        file: "kubernetes-sha256.txt",
        command: "sudo sh -c 'for d in /etc/kubernetes /var/lib/kubelet; do \
                  if [ -d \"$d\" ]; then find \"$d\" -type f -exec sha256sum {} +; \
                  else echo \"$d: no such directory\" >&2; fi; done'",
    },
];

/// Replaces every authorized key of `$1` with the key on stdin: in
/// `~/.ssh/authorized_keys` and as the only fragment of
/// `~/.ssh/authorized_keys.d/` (`ignition`, which Ignition writes and
/// sshd reads on Flatcar, FCOS and the lab), `authorized_keys2` removed.
/// Prints the keys now authorized, for the caller to check.
const SEAL: &str = r#"set -eu
user="$1"
key=$(cat)
home=$(getent passwd "$user" | cut -d: -f6)
[ -n "$home" ] && [ -d "$home" ] || { echo "no home directory for $user" >&2; exit 1; }
group=$(id -gn "$user")
umask 077
mkdir -p "$home/.ssh/authorized_keys.d"
find "$home/.ssh/authorized_keys.d" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
rm -f "$home/.ssh/authorized_keys2"
printf '%s\n' "$key" >"$home/.ssh/authorized_keys.metalherd-new"
mv -f "$home/.ssh/authorized_keys.metalherd-new" "$home/.ssh/authorized_keys"
printf '%s\n' "$key" >"$home/.ssh/authorized_keys.d/ignition"
chown -R "$user:$group" "$home/.ssh"
chmod 0700 "$home/.ssh" "$home/.ssh/authorized_keys.d"
chmod 0600 "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys.d/ignition"
cat "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys.d"/*
"#;

/// Hands SSH to the forensic key: `user`'s authorized keys become
/// `forensic_key` alone (metalherd's and the admins' go), then the
/// collector address is removed from the ruleset, detached and a moment
/// later, so this session closes cleanly first. After this metalherd can
/// no longer reach the node. Returns the collector address removed.
pub async fn seal(session: &Session, user: &str, forensic_key: &str) -> anyhow::Result<IpAddr> {
    let key = forensic_key.trim();
    if key.is_empty() || key.contains('\n') {
        bail!("forensics.ssh_authorized_key must be one line");
    }
    let collector = collector(session).await?;
    let command = format!("sudo sh -c {} sh {}", shell_quote(SEAL), shell_quote(user));
    let out = session
        .run(
            "replace the authorized keys (seal)",
            &command,
            Some(key.as_bytes()),
        )
        .await?;
    let now: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if now.is_empty() || now.iter().any(|l| l.trim() != key) {
        bail!(
            "after the seal, {user}'s authorized keys are not the forensic key alone ({} line(s))",
            now.len()
        );
    }
    let remove = format!(
        "nohup sh -c \"sleep 2; nft delete element inet {TABLE} collector {{ {collector} }}\" \
         </dev/null >/dev/null 2>&1 &"
    );
    session
        .run(
            "remove the collector address (seal)",
            &format!("sudo sh -c {}", shell_quote(&remove)),
            None,
        )
        .await?;
    Ok(collector)
}

/// Whether `addr` (a node's SSH port) is now closed to metalherd: each attempt waits
/// `attempt` for a TCP connection; a timeout (or an unreachable host)
/// proves the drop. A connection, or a refusal (a reset: something
/// answered), is retried until `deadline`, as the seal removes the
/// collector address a moment after it returns. `Ok` says how it failed
/// to connect, `Err` why the isolation does not hold.
pub async fn port_closed(
    addr: SocketAddr,
    attempt: Duration,
    deadline: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let last = match tokio::time::timeout(attempt, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => {
                return Ok(format!(
                    "{addr}: connect timed out after {} s",
                    attempt.as_secs()
                ))
            }
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                return Ok(format!("{addr}: {e}"))
            }
            Ok(Err(e)) => format!("{addr}: {e} (the host answered: not dropped)"),
            Ok(Ok(_)) => format!("{addr}: still accepts TCP connections from metalherd"),
        };
        if start.elapsed() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_allows_only_loopback_the_bastion_and_the_collector() {
        let rules = ruleset(
            "10.20.4.14".parse().unwrap(),
            "10.10.4.1".parse().unwrap(),
            Duration::from_secs(7200),
        );
        let expected =
            "# metalherd lockdown: only the forensic bastion 10.20.4.14 may reach this machine.
table inet metalherd_lockdown
delete table inet metalherd_lockdown
table inet metalherd_lockdown {
\tset collector {
\t\ttype ipv4_addr
\t\tflags timeout
\t\telements = { 10.10.4.1 timeout 7200s }
\t}
\tchain input {
\t\ttype filter hook input priority -190; policy drop;
\t\tiif \"lo\" accept
\t\tip saddr 10.20.4.14 accept
\t\tip saddr @collector accept
\t}
\tchain output {
\t\ttype filter hook output priority -190; policy drop;
\t\toif \"lo\" accept
\t\tip daddr 10.20.4.14 ct state established,related accept
\t\tip daddr @collector ct state established,related accept
\t}
\tchain forward {
\t\ttype filter hook forward priority -190; policy drop;
\t}
}
";
        assert_eq!(rules, expected);
    }

    #[test]
    fn ipv6_addresses_get_their_family_and_neighbour_discovery() {
        let rules = ruleset(
            "fd00::5".parse().unwrap(),
            "10.10.4.1".parse().unwrap(),
            Duration::from_secs(60),
        );
        assert!(rules.contains("ip6 saddr fd00::5 accept"), "{rules}");
        assert!(rules.contains("ip saddr @collector accept"), "{rules}");
        assert!(rules.contains("type ipv4_addr"), "{rules}");
        assert_eq!(rules.matches("nd-neighbor-solicit").count(), 2, "{rules}");
        let rules = ruleset(
            "10.0.0.5".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            Duration::from_secs(60),
        );
        assert!(rules.contains("type ipv6_addr"), "{rules}");
        assert!(rules.contains("ip6 daddr @collector ct state"), "{rules}");
    }

    #[tokio::test]
    async fn a_port_that_answers_or_resets_is_not_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let said = port_closed(open, Duration::from_secs(2), Duration::ZERO).await;
        assert!(said.unwrap_err().contains("still accepts"));
        drop(listener);
        let said = port_closed(open, Duration::from_secs(2), Duration::ZERO).await;
        assert!(said.unwrap_err().contains("not dropped"));
    }
}
