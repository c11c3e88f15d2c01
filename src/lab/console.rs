//! `lab console M`: the terminal joined to a lab VM's serial console
//! socket, raw, until Ctrl-].

use std::io::{Read, Write};

use anyhow::Context;

/// Joins the terminal to the VM's serial console socket until Ctrl-].
pub fn attach(socket: &std::path::Path) -> anyhow::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    eprintln!("\r\n[connected to the console; Ctrl-] leaves]\r");
    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(mut raw) = saved.clone() {
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
    }
    let mut reader = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut writer = stream;
    let mut buf = [0u8; 1];
    let mut input = std::io::stdin().lock();
    while input.read(&mut buf).map(|n| n == 1).unwrap_or(false) {
        if buf[0] == 0x1d {
            break;
        }
        if writer.write_all(&buf).is_err() {
            break;
        }
    }
    if let Some(saved) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    }
    eprintln!("\r\n[left the console]");
    Ok(())
}
