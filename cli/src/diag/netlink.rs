//! Netlink over a raw `AF_NETLINK` socket: framing (messages and attributes) as pure parsers over
//! `&[u8]`, and a small request/response socket. No external tools, no C helpers.
//!
//! Every parser here takes bytes a kernel (or anyone able to write to our netlink socket) sent and
//! returns `Err(ParseError)` on anything malformed: lengths are checked before every slice, so no
//! input can make them panic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{DiagError, ParseError};
use envoy_smc_core::smc::sys::syscall;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// `nla_type` bits that are flags, not the type.
const NLA_TYPE_MASK: u16 = !(libc::NLA_F_NESTED as u16 | libc::NLA_F_NET_BYTEORDER as u16);

pub const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
pub const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;

/// Netlink lengths are padded to 4 bytes.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message, borrowed from a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// The bytes after the header, exactly `nlmsg_len - 16` of them.
    pub payload: &'a [u8],
}

/// The messages in one datagram. Yields `Err` once on a malformed header, then stops.
pub struct MsgIter<'a> {
    buf: &'a [u8],
    off: usize,
    failed: bool,
}

/// Iterates over the netlink messages in `buf`.
pub fn messages(buf: &[u8]) -> MsgIter<'_> {
    MsgIter {
        buf,
        off: 0,
        failed: false,
    }
}

impl<'a> Iterator for MsgIter<'a> {
    type Item = Result<NlMsg<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.off >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.off..];
        let at = self.off;
        let Some(hdr) = rest.get(..NLMSG_HDRLEN) else {
            self.failed = true;
            return Some(Err(ParseError::new(
                "netlink message",
                at,
                format!("{} bytes left, a header needs 16", rest.len()),
            )));
        };
        let len = u32_ne(&hdr[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            self.failed = true;
            return Some(Err(ParseError::new(
                "netlink message",
                at,
                format!("length {len} with {} bytes left", rest.len()),
            )));
        }
        let msg = NlMsg {
            ty: u16_ne(&hdr[4..6]),
            flags: u16_ne(&hdr[6..8]),
            seq: u32_ne(&hdr[8..12]),
            pid: u32_ne(&hdr[12..16]),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        // The last message of a datagram may omit its padding.
        self.off += align4(len).min(rest.len());
        Some(Ok(msg))
    }
}

/// One netlink attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type without the NESTED / NET_BYTEORDER flag bits.
    pub ty: u16,
    pub nested: bool,
    pub data: &'a [u8],
}

/// The attributes in a buffer. Yields `Err` once on a malformed attribute, then stops.
pub struct AttrIter<'a> {
    buf: &'a [u8],
    off: usize,
    what: &'static str,
    failed: bool,
}

/// Iterates over the attributes in `buf`; `what` names the enclosing structure in errors.
pub fn attrs<'a>(buf: &'a [u8], what: &'static str) -> AttrIter<'a> {
    AttrIter {
        buf,
        off: 0,
        what,
        failed: false,
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<Attr<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.off >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.off..];
        let at = self.off;
        if rest.len() < NLA_HDRLEN {
            self.failed = true;
            return Some(Err(ParseError::new(
                self.what,
                at,
                format!("{} bytes left, an attribute header needs 4", rest.len()),
            )));
        }
        let len = u16_ne(&rest[0..2]) as usize;
        let raw_ty = u16_ne(&rest[2..4]);
        if len < NLA_HDRLEN || len > rest.len() {
            self.failed = true;
            return Some(Err(ParseError::new(
                self.what,
                at,
                format!(
                    "attribute {} has length {len} with {} bytes left",
                    raw_ty & NLA_TYPE_MASK,
                    rest.len()
                ),
            )));
        }
        self.off += align4(len).min(rest.len());
        Some(Ok(Attr {
            ty: raw_ty & NLA_TYPE_MASK,
            nested: raw_ty & libc::NLA_F_NESTED as u16 != 0,
            data: &rest[NLA_HDRLEN..len],
        }))
    }
}

impl<'a> Attr<'a> {
    fn need(&self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        self.data.get(..n).ok_or_else(|| {
            ParseError::new(
                what,
                0,
                format!(
                    "attribute {} has {} bytes, needs {n}",
                    self.ty,
                    self.data.len()
                ),
            )
        })
    }

    pub fn u8(&self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.need(1, what)?[0])
    }

    pub fn u16(&self, what: &'static str) -> Result<u16, ParseError> {
        Ok(u16_ne(self.need(2, what)?))
    }

    pub fn u32(&self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32_ne(self.need(4, what)?))
    }

    pub fn u64(&self, what: &'static str) -> Result<u64, ParseError> {
        Ok(u64_ne(self.need(8, what)?))
    }

    /// `NLA_UINT`-style counters: 8 bytes, or 4 when the value fits (FACTS.md); older kernels
    /// also sent some counters as u16/u8.
    pub fn uint(&self, what: &'static str) -> Result<u64, ParseError> {
        match self.data.len() {
            8.. => Ok(u64_ne(&self.data[..8])),
            4..=7 => Ok(u32_ne(&self.data[..4]) as u64),
            2..=3 => Ok(u16_ne(&self.data[..2]) as u64),
            1 => Ok(self.data[0] as u64),
            0 => Err(ParseError::new(
                what,
                0,
                format!("attribute {} is empty, needs a number", self.ty),
            )),
        }
    }

    /// A C string (up to the first NUL, or the whole attribute), invalid UTF-8 replaced.
    pub fn string(&self) -> String {
        c_string(self.data)
    }

    /// The attributes nested in this one.
    pub fn nested_attrs(&self, what: &'static str) -> AttrIter<'a> {
        attrs(self.data, what)
    }
}

/// A NUL-terminated (or unterminated) byte string as text.
pub fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn u16_ne(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_ne_bytes(a)
}

pub fn u32_ne(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_ne_bytes(a)
}

pub fn u64_ne(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_ne_bytes(a)
}

/// Appends one attribute (header, data, padding) to `out`.
pub fn put_attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = NLA_HDRLEN + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// A whole message: header + payload, padded.
pub fn build_msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align4(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ACK).
pub fn parse_error_payload(payload: &[u8]) -> Result<i32, ParseError> {
    let b = payload.get(..4).ok_or_else(|| {
        ParseError::new(
            "netlink error message",
            0,
            format!("{} bytes, needs 4", payload.len()),
        )
    })?;
    // wrapping: a hostile peer may send i32::MIN, whose negation overflows
    Ok((u32_ne(b) as i32).wrapping_neg())
}

/// An owned message from a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMsg {
    pub ty: u16,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// A netlink socket of one protocol (`NETLINK_SOCK_DIAG`, `NETLINK_GENERIC`), bound to a
/// kernel-assigned port id. Requests are sequential: one outstanding request at a time.
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// How long one receive may block: the kernel answers these requests at once, so a silent socket
/// means something is wrong and the CLI must not hang.
const RECV_TIMEOUT_SECS: libc::time_t = 5;

impl NlSocket {
    pub fn open(protocol: libc::c_int) -> io::Result<NlSocket> {
        let fd = syscall!(socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol
        ))?;
        // SAFETY: the kernel just returned this fd; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (family set below).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        syscall!(bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t
        ))?;
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        syscall!(setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t
        ))?;
        // Extended ACKs carry the kernel's error text; best effort (Linux >= 4.12).
        let one: libc::c_int = 1;
        let _ = syscall!(setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_EXT_ACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t
        ));
        Ok(NlSocket {
            fd,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects the reply: every message up to `NLMSG_DONE` for a dump,
    /// or up to the ACK (`NLMSG_ERROR` with 0) when `NLM_F_ACK` is set. A kernel error (a
    /// negative errno in `NLMSG_ERROR` or in `NLMSG_DONE`) becomes `DiagError::Kernel`.
    pub fn request(
        &mut self,
        what: &'static str,
        ty: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<Vec<OwnedMsg>, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = build_msg(ty, flags | libc::NLM_F_REQUEST as u16, seq, payload);
        // SAFETY: sockaddr_nl is plain data; all-zero addresses the kernel (pid 0).
        let mut dst: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        dst.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        syscall!(sendto(
            self.fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&dst as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t
        ))
        .map_err(|e| DiagError::io(what, e))?;
        let dump = flags & libc::NLM_F_DUMP as u16 == libc::NLM_F_DUMP as u16;
        let mut out = Vec::new();
        loop {
            let n = self.recv_datagram().map_err(|e| DiagError::io(what, e))?;
            for m in messages(&self.buf[..n]) {
                let m = m.map_err(DiagError::Parse)?;
                if m.seq != seq {
                    // A late answer to an earlier request (e.g. after a timeout): not ours.
                    continue;
                }
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let errno = parse_error_payload(m.payload).map_err(DiagError::Parse)?;
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(DiagError::kernel(what, errno));
                    }
                    NLMSG_DONE => {
                        // A dump that failed half-way reports its errno in DONE.
                        if let Some(b) = m.payload.get(..4) {
                            let v = u32_ne(b) as i32;
                            if v < 0 {
                                return Err(DiagError::kernel(what, v.wrapping_neg()));
                            }
                        }
                        return Ok(out);
                    }
                    _ => {
                        out.push(OwnedMsg {
                            ty: m.ty,
                            flags: m.flags,
                            payload: m.payload.to_vec(),
                        });
                        if !dump
                            && m.flags & libc::NLM_F_MULTI as u16 == 0
                            && flags & libc::NLM_F_ACK as u16 == 0
                        {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it when the datagram is larger.
    fn recv_datagram(&mut self) -> io::Result<usize> {
        loop {
            // MSG_PEEK|MSG_TRUNC returns the datagram's real size without consuming it.
            let want = syscall!(recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_PEEK | libc::MSG_TRUNC
            ));
            let want = match want {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from the kernel within 5 s",
                    ))
                }
                Err(e) => return Err(e),
            };
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
            match syscall!(recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0
            )) {
                Ok(n) => return Ok(n as usize),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_a_datagram_and_reject_bad_lengths() {
        let mut buf = build_msg(20, 2, 7, &[1, 2, 3]);
        buf.extend(build_msg(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes()));
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].payload, &[1, 2, 3]);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(msgs[1].ty, NLMSG_DONE);

        // length field larger than the buffer
        let mut bad = build_msg(20, 0, 1, &[0; 8]);
        bad[0] = 200;
        assert!(messages(&bad).next().unwrap().is_err());
        // length smaller than a header
        bad[0] = 3;
        assert!(messages(&bad).next().unwrap().is_err());
        // a stub
        assert!(messages(&bad[..5]).next().unwrap().is_err());
    }

    #[test]
    fn attributes_nest_and_numbers_accept_both_widths() {
        let mut inner = Vec::new();
        put_attr(&mut inner, 1, &7u32.to_ne_bytes());
        put_attr(&mut inner, 2, &9u64.to_ne_bytes());
        put_attr(&mut inner, 3, b"abc\0");
        let mut outer = Vec::new();
        put_attr(&mut outer, 5 | libc::NLA_F_NESTED as u16, &inner);
        let a: Vec<_> = attrs(&outer, "t").collect::<Result<_, _>>().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ty, 5);
        assert!(a[0].nested);
        let n: Vec<_> = a[0].nested_attrs("t").collect::<Result<_, _>>().unwrap();
        assert_eq!(n[0].uint("t").unwrap(), 7);
        assert_eq!(n[1].uint("t").unwrap(), 9);
        assert_eq!(n[2].string(), "abc");
        assert!(n[2].u64("t").is_err());

        let mut bad = outer.clone();
        bad[0] = 0xff;
        assert!(attrs(&bad, "t").next().unwrap().is_err());
    }
}
