//! Free loopback ports, and the retry that absorbs the race between picking a
//! port and the server binding it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// How many times a server start is attempted on fresh ports before giving up.
pub const PORT_ATTEMPTS: usize = 5;

/// Ports already handed out by this process: never hand the same one out twice,
/// even if the server that got it has not bound it yet.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// Another process may still take it before the server binds it; start servers
/// through [`with_port_retry`] to survive that.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free ports (for servers that listen on more than one, like etcd).
///
/// All listeners are held open together, so the kernel cannot return a port twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut seen = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    // Bounded: the kernel hands out many thousands of ports before repeating.
    for _ in 0..n * 50 {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading the address of a probe listener", e))?
            .port();
        if seen.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    if ports.len() < n {
        return Err(Error::io(
            "finding free ports",
            std::io::Error::other("the kernel kept returning ports already handed out"),
        ));
    }
    Ok(ports)
}

/// Runs `start` with a fresh port, retrying up to `attempts` times while it fails
/// with [`Error::PortInUse`]; any other error is returned at once.
pub fn with_port_retry<T>(attempts: usize, mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    with_ports_retry(1, attempts, |ports| start(ports[0]))
}

/// Like [`with_port_retry`] for servers that need `n` distinct ports.
pub fn with_ports_retry<T>(
    n: usize,
    attempts: usize,
    mut start: impl FnMut(&[u16]) -> Result<T>,
) -> Result<T> {
    let mut attempt = 1;
    loop {
        let ports = free_ports(n)?;
        match start(&ports) {
            Err(e) if e.is_retryable() && attempt < attempts => {
                tracing::debug!(attempt, error = %e, "port taken, retrying on a new one");
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(4).unwrap();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), 4);
        for port in ports {
            assert_ne!(port, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn free_port_never_repeats_within_a_process() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn retry_moves_to_a_new_port_only_when_the_port_is_taken() {
        let mut tried = Vec::new();
        let got = with_port_retry(5, |port| {
            tried.push(port);
            if tried.len() < 3 {
                Err(Error::PortInUse {
                    server: "test".into(),
                    port,
                })
            } else {
                Ok(port)
            }
        })
        .unwrap();
        assert_eq!(tried.len(), 3);
        assert_eq!(got, tried[2]);
        assert_ne!(tried[0], tried[1]);

        let mut calls = 0;
        let err = with_port_retry(5, |_| -> Result<()> {
            calls += 1;
            Err(Error::NoSuchUser("nobody-here".into()))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, Error::NoSuchUser(_)));
    }

    #[test]
    fn retry_gives_up_after_the_attempt_budget() {
        let mut calls = 0;
        let err = with_port_retry(PORT_ATTEMPTS, |port| -> Result<()> {
            calls += 1;
            Err(Error::PortInUse {
                server: "test".into(),
                port,
            })
        })
        .unwrap_err();
        assert_eq!(calls, PORT_ATTEMPTS);
        assert!(err.is_retryable());
    }
}
