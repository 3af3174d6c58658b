//! The smallest HTTP/1.x server a Prometheus scrape needs, on std only: one connection at a time
//! (scrapes are seconds apart), `GET`/`HEAD` only, the request head capped at
//! [`MAX_HEAD`] bytes and read within [`CLIENT_DEADLINE`] in total (a client sending one byte at
//! a time cannot hold the server), `Connection: close` on every answer. The loop ends when the
//! stop fd (a signalfd for SIGTERM/SIGINT) becomes readable.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Largest request head accepted (request line and headers); a scrape sends about 300 bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and again to take the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// GET (body wanted) or HEAD of a path.
    Get { path: String, head_only: bool },
    /// A request line we understood with a method we do not serve.
    OtherMethod,
}

/// Parses a request head; `Err` with the reason for a 400.
pub fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not METHOD TARGET VERSION");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err("not HTTP/1.0 or HTTP/1.1");
    }
    if !target.starts_with('/') {
        return Err("request target is not an absolute path");
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    match method {
        "GET" => Ok(Request::Get {
            path,
            head_only: false,
        }),
        "HEAD" => Ok(Request::Get {
            path,
            head_only: true,
        }),
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Request::OtherMethod),
        _ => Err("bad method"),
    }
}

/// Reads a request head (up to the blank line) within the deadline.
fn read_head(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, &'static str> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("request head not sent in time");
        }
        s.set_read_timeout(Some(left)).map_err(|_| "socket error")?;
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed before the request ended"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err("request head not sent in time"),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large");
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) {
    // A client that does not take the answer is dropped after this long.
    let _ = s.set_write_timeout(Some(CLIENT_DEADLINE));
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    if !head_only {
        let _ = s.write_all(body);
    }
}

/// Answers one connection: `/metrics` from `metrics()`, a short index on `/`, 404, 405 or 400.
pub fn handle(mut s: TcpStream, metrics: &mut dyn FnMut() -> String, limit: Duration) {
    let req = match read_head(&mut s, limit) {
        Ok(h) => parse_head(&h),
        Err("request head too large") => Err("request head too large"),
        Err(_) => return, // timed out or gone: nobody to answer
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    match req {
        Ok(Request::Get { path, head_only }) if path == "/metrics" => {
            let page = metrics();
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                page.as_bytes(),
                head_only,
            );
        }
        Ok(Request::Get { path, head_only }) if path == "/" => respond(
            &mut s,
            "200 OK",
            TEXT,
            b"envoy-smc exporter: metrics at /metrics\n",
            head_only,
        ),
        Ok(Request::Get { head_only, .. }) => respond(
            &mut s,
            "404 Not Found",
            TEXT,
            b"not found; try /metrics\n",
            head_only,
        ),
        Ok(Request::OtherMethod) => respond(
            &mut s,
            "405 Method Not Allowed",
            TEXT,
            b"only GET and HEAD\n",
            false,
        ),
        Err(why) => {
            respond(
                &mut s,
                "400 Bad Request",
                TEXT,
                format!("bad request: {why}\n").as_bytes(),
                false,
            );
            // Take (a bounded amount of) what the client is still sending, so that closing
            // with unread bytes does not reset the connection before it reads the answer.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = io::copy(&mut (&s).take(4 * MAX_HEAD as u64), &mut io::sink());
        }
    }
}

/// Serves until `stop` is readable. `Err` only when waiting itself fails.
pub fn serve(
    listener: &TcpListener,
    stop: RawFd,
    metrics: &mut dyn FnMut() -> String,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of 2 pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        match listener.accept() {
            Ok((s, _)) => {
                if s.set_nonblocking(false).is_ok() {
                    handle(s, metrics, CLIENT_DEADLINE);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EMFILE and friends: pause a little rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Ok(Request::Get {
                path: "/metrics".into(),
                head_only: false
            })
        );
        assert_eq!(
            parse_head(b"HEAD /metrics?x=1 HTTP/1.0"),
            Ok(Request::Get {
                path: "/metrics".into(),
                head_only: true
            })
        );
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1"),
            Ok(Request::OtherMethod)
        );
        assert!(parse_head(b"GET /metrics").is_err());
        assert!(parse_head(b"GET metrics HTTP/1.1").is_err());
        assert!(parse_head(b"GET /metrics HTTP/2").is_err());
        assert!(parse_head(b"\xff\xfe").is_err());
        assert!(parse_head(b"get / HTTP/1.1").is_err());
        assert!(parse_head(b"").is_err());
    }

    /// Sends `req` to a real connection served by `handle` and returns the answer.
    fn exchange(req: &'static [u8], limit: Duration) -> (String, Duration) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            if !req.is_empty() {
                let _ = c.write_all(req);
            }
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            out
        });
        let (s, _) = l.accept().unwrap();
        let t = Instant::now();
        handle(s, &mut || "envoy_smc_up 1\n".to_string(), limit);
        let took = t.elapsed();
        (client.join().unwrap(), took)
    }

    #[test]
    fn answers_metrics_404_405_and_400() {
        let (ok, _) = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", CLIENT_DEADLINE);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"));
        assert!(ok.ends_with("\r\n\r\nenvoy_smc_up 1\n"), "{ok}");
        let (head, _) = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n", CLIENT_DEADLINE);
        assert!(
            head.contains("Content-Length: 15") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let (nf, _) = exchange(b"GET /nope HTTP/1.1\r\n\r\n", CLIENT_DEADLINE);
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let (post, _) = exchange(b"POST /metrics HTTP/1.1\r\n\r\n", CLIENT_DEADLINE);
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let (bad, _) = exchange(b"garbage\r\n\r\n", CLIENT_DEADLINE);
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        static BIG: [u8; 3 * MAX_HEAD] = [b'a'; 3 * MAX_HEAD];
        let (big, _) = exchange(&BIG, CLIENT_DEADLINE);
        assert!(
            big.starts_with("HTTP/1.1 400") && big.contains("too large"),
            "{big}"
        );
    }

    #[test]
    fn a_silent_client_is_dropped_at_the_deadline() {
        // The client sends half a request and waits: the server gives up after `limit`.
        let (out, took) = exchange(b"GET /metrics HTTP/1.1\r\n", Duration::from_millis(300));
        assert_eq!(out, "");
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }
}
