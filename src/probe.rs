//! `realtime healthcheck`: the container health check, for images without curl or a shell.
//!
//! Asks the node running beside it (same container, so loopback) for `GET /healthcheck` and
//! exits 0 on a 200 answer, 1 otherwise (refused, timed out, or any other status). The node's
//! address comes from the same variables the server reads: `PORT` (default 4000) and
//! `BIND_ADDR` (loopback when it is unspecified, `0.0.0.0` or `::`). Only the standard library:
//! no runtime, no configuration parsing, so a node with a bad variable still gets a clear
//! "unhealthy" rather than a configuration error.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// The first argument that runs the health check instead of the server.
pub const SUBCOMMAND: &str = "healthcheck";

/// Longest the whole check may take (connect, request, status line).
const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the health check against the local node and returns the process exit code.
pub fn healthcheck() -> ExitCode {
    let addr = match local_node_addr(
        std::env::var("PORT").ok().as_deref(),
        std::env::var("BIND_ADDR").ok().as_deref(),
    ) {
        Ok(addr) => addr,
        Err(problem) => {
            eprintln!("healthcheck: {problem}");
            return ExitCode::FAILURE;
        }
    };
    match status_of(addr) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: {addr} answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("healthcheck: {addr}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The address of the node in this container: `BIND_ADDR` (loopback of its family when it is
/// unspecified) and `PORT`, with the server's defaults.
fn local_node_addr(port: Option<&str>, bind: Option<&str>) -> Result<SocketAddr, String> {
    let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
        None => 4000,
        Some(raw) => match raw.parse::<u16>() {
            Ok(0) => return Err("PORT=0 names no port to check".into()),
            Ok(port) => port,
            Err(_) => return Err(format!("PORT={raw} is not a port number")),
        },
    };
    let ip = match bind.map(str::trim).filter(|b| !b.is_empty()) {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(raw) => match raw.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Ok(IpAddr::V6(v6)) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Ok(ip) => ip,
            Err(_) => return Err(format!("BIND_ADDR={raw} is not an IP address")),
        },
    };
    Ok(SocketAddr::new(ip, port))
}

/// Sends `GET /healthcheck` and returns the status code of the answer.
fn status_of(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    // The status line fits in the first read of any real answer; read up to its end.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not an HTTP response",
        )
    })
}

/// Reads the code out of `HTTP/1.x NNN reason`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_follows_port_and_bind_addr() {
        assert_eq!(
            local_node_addr(None, None),
            Ok("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            local_node_addr(Some("4100"), Some("0.0.0.0")),
            Ok("127.0.0.1:4100".parse().unwrap())
        );
        assert_eq!(
            local_node_addr(Some("4100"), Some("::")),
            Ok("[::1]:4100".parse().unwrap())
        );
        assert_eq!(
            local_node_addr(Some(""), Some("10.1.2.3")),
            Ok("10.1.2.3:4000".parse().unwrap())
        );
        assert!(local_node_addr(Some("0"), None).is_err());
        assert!(local_node_addr(Some("http"), None).is_err());
        assert!(local_node_addr(None, Some("localhost")).is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx: y"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
