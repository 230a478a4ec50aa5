//! Settings of the HTTP/WebSocket listener, read by `app` (bind, accept) and the HTTP edges.

use std::net::{IpAddr, SocketAddr};

use super::ConfigError;
use super::vars::{Vars, ip_address, port_number, positive_u32, positive_usize};

/// HTTP and WebSocket listener settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// `PORT`: TCP port of the HTTP/WebSocket listener. Default 4000.
    pub port: u16,
    /// `BIND_ADDR`: address to listen on. Default `0.0.0.0` (all IPv4 interfaces).
    pub bind_ip: IpAddr,
    /// `MAX_CONNECTIONS`: most simultaneous TCP connections this node accepts. Default 1000.
    pub max_connections: u32,
    /// `MAX_HEADER_LENGTH`: longest accepted HTTP header value, bytes. Default 4096.
    pub max_header_length: usize,
    /// `NUM_ACCEPTORS`: accepted for compatibility; tokio uses one accept loop. Default 100.
    pub num_acceptors: u32,
    /// `MAX_REQUEST_BODY_BYTES`: largest HTTP request body, bytes. Default 5000000 (the
    /// original's WebSocket frame limit).
    pub max_body_bytes: usize,
}

impl HttpConfig {
    /// Returns the socket address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.port)
    }

    pub(super) fn parse(env: &Vars) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            port: env.parse_or("PORT", 4000, port_number)?,
            bind_ip: env.parse_or("BIND_ADDR", IpAddr::from([0, 0, 0, 0]), ip_address)?,
            max_connections: env.parse_or("MAX_CONNECTIONS", 1000, positive_u32)?,
            max_header_length: env.parse_or("MAX_HEADER_LENGTH", 4096, positive_usize)?,
            num_acceptors: env.parse_or("NUM_ACCEPTORS", 100, positive_u32)?,
            max_body_bytes: env.parse_or("MAX_REQUEST_BODY_BYTES", 5_000_000, positive_usize)?,
        })
    }
}
