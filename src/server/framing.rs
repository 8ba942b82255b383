//! Finds the HTTP/1 request heads that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper reads such a request as chunked and drops its `Content-Length` before the handler
//! sees it (RFC 9112 §6.3 allows that, with the connection closed after the response), so the
//! proxy could not tell it from a plain chunked request, and would forward it. the README promises
//! it refused (400, connection closed), as Envoy does: a front end that read the other header
//! would see a different request. So a [`Scanner`] follows every byte an HTTP/1 connection
//! reads, head by head and body by body (`Content-Length` bodies are skipped by count, chunked
//! ones by their chunk sizes), and notes the first head that carries both.
//!
//! It only has to agree with hyper on requests hyper accepts (anything else closes the
//! connection with a 400 of hyper's own): header lines end at `\n`, names are matched
//! without case, a head ends at an empty line, and empty lines before a request line are
//! skipped. After a head that asks to switch protocols (`Upgrade`, `CONNECT`) it stops: the
//! bytes that follow may belong to another protocol. Such a connection, when the upstream
//! declines the switch, is not scanned any further; hyper still reads a request with both
//! headers there as chunked and closes the connection after it, so nothing is smuggled.
//!
//! It reads each byte of a head once, looking closely only at the first bytes of each line;
//! memchr finds the line ends.

/// The longest header name it needs to recognise, `transfer-encoding`.
const NAME_MAX: usize = 17;

/// Follows the request stream of one HTTP/1 connection (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct Scanner {
    state: State,
    /// Complete heads seen so far.
    heads: u64,
    /// The index (from 0) of the first head with both framing headers.
    ambiguous: Option<u64>,
}

#[derive(Debug, Clone)]
enum State {
    /// In a head (or before one), with what its lines said so far.
    Head(Head),
    /// In a `Content-Length` body: this many bytes left.
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Not scanning any more (after a protocol switch, or an ambiguous head).
    Off,
}

/// What the head being read has said, and where it is in its current line.
#[derive(Debug, Clone, Default)]
struct Head {
    /// A non-empty line has been seen (the request line).
    started: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// `Upgrade` or `CONNECT`: the connection may switch protocols after this request.
    switches: bool,
    line: Line,
}

/// The current line of a head, as far as it has been read, when it is split across reads.
#[derive(Debug, Clone, Default)]
struct Line {
    /// A header line (the request line has been seen).
    header: bool,
    /// Bytes of the line seen so far, up to 255 (only "none", "one" and "fewer than 8"
    /// matter).
    len: u8,
    /// The header name, lowercased, while it is short enough to matter.
    name: [u8; NAME_MAX],
    name_len: u8,
    /// Past the name's colon (header lines), or past the name's room (anything else).
    named: bool,
    /// What the line is, once named.
    kind: Kind,
    /// A `Content-Length` value so far (digits; anything else makes it unknown).
    value: Option<u64>,
    /// Its digits have begun, and have ended (only whitespace may follow).
    digits: bool,
    digits_done: bool,
    /// The first bytes of a request line, to tell `CONNECT`.
    method: [u8; 8],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
    Upgrade,
}

/// Where a chunked body is.
#[derive(Debug, Clone)]
enum Chunk {
    /// In a chunk-size line: the size so far, and whether its hex digits have ended.
    Size { size: u64, digits_done: bool },
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data, up to the end of its line.
    DataEnd,
    /// In the trailer section: whether the current line has a byte other than `\r`.
    Trailers { line_has_bytes: bool },
}

impl Scanner {
    pub(super) fn new() -> Scanner {
        Scanner { state: State::Head(Head::default()), heads: 0, ambiguous: None }
    }

    /// The index (0 for the connection's first request) of the first request whose head
    /// carried both `Content-Length` and `Transfer-Encoding`.
    pub(super) fn ambiguous(&self) -> Option<u64> {
        self.ambiguous
    }

    /// Follows `bytes`, the next bytes the connection read.
    pub(super) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Off => return,
                State::Body(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Head(Head::default());
                    }
                    &bytes[take..]
                }
                State::Head(_) => self.head(bytes),
                State::Chunked(_) => self.chunked(bytes),
            };
        }
    }

    /// Reads head bytes up to and including the next line end; returns the rest. A line that
    /// is all in `bytes` (nearly every one) is looked at in place; one split across reads is
    /// followed a byte at a time.
    fn head<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let State::Head(head) = &mut self.state else { return bytes };
        let Some(at) = memchr::memchr(b'\n', bytes) else {
            head.line.read(bytes, head.started);
            return &[];
        };
        let line = &bytes[..at];
        let seen = if head.line.len == 0 {
            Seen::of(line.strip_suffix(b"\r").unwrap_or(line), head.started)
        } else {
            head.line.read(line, head.started);
            std::mem::take(&mut head.line).seen()
        };
        self.line(seen);
        &bytes[at + 1..]
    }

    fn line(&mut self, seen: Seen) {
        let State::Head(head) = &mut self.state else { return };
        match seen {
            // Empty lines before a request line are skipped (RFC 9112 §2.2).
            Seen::Empty if !head.started => {}
            Seen::RequestLine { connect } => {
                head.started = true;
                head.switches |= connect;
            }
            Seen::Header(Kind::ContentLength, value) => head.content_length = Some(value.unwrap_or(u64::MAX)),
            Seen::Header(Kind::TransferEncoding, _) => head.transfer_encoding = true,
            Seen::Header(Kind::Upgrade, _) => head.switches = true,
            Seen::Header(Kind::Other, _) => {}
            Seen::Empty => self.end_head(),
        }
    }

    fn end_head(&mut self) {
        let State::Head(head) = &mut self.state else { return };
        let index = self.heads;
        self.heads += 1;
        let head = std::mem::take(head);
        self.state = match (head.content_length, head.transfer_encoding) {
            (Some(_), true) => {
                self.ambiguous.get_or_insert(index);
                State::Off
            }
            _ if head.switches => State::Off,
            (_, true) => State::Chunked(Chunk::Size { size: 0, digits_done: false }),
            (Some(len), false) if len > 0 => State::Body(len),
            _ => State::Head(Head::default()),
        };
    }

    /// Reads chunked-body bytes; returns the rest.
    fn chunked<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let State::Chunked(chunk) = &mut self.state else { return bytes };
        match chunk {
            Chunk::Data(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                *left -= take as u64;
                if *left == 0 {
                    *chunk = Chunk::DataEnd;
                }
                &bytes[take..]
            }
            Chunk::DataEnd => match memchr::memchr(b'\n', bytes) {
                Some(at) => {
                    *chunk = Chunk::Size { size: 0, digits_done: false };
                    &bytes[at + 1..]
                }
                None => &[],
            },
            Chunk::Size { size, digits_done } => {
                for (i, &b) in bytes.iter().enumerate() {
                    if b == b'\n' {
                        *chunk = if *size == 0 {
                            Chunk::Trailers { line_has_bytes: false }
                        } else {
                            Chunk::Data(*size)
                        };
                        return &bytes[i + 1..];
                    }
                    match (*digits_done, char::from(b).to_digit(16)) {
                        (false, Some(d)) => *size = size.saturating_mul(16).saturating_add(u64::from(d)),
                        _ => *digits_done = true,
                    }
                }
                &[]
            }
            Chunk::Trailers { line_has_bytes } => {
                for (i, &b) in bytes.iter().enumerate() {
                    match b {
                        b'\n' if !*line_has_bytes => {
                            self.state = State::Head(Head::default());
                            return &bytes[i + 1..];
                        }
                        b'\n' => *line_has_bytes = false,
                        b'\r' => {}
                        _ => *line_has_bytes = true,
                    }
                }
                &[]
            }
        }
    }
}

/// What a whole line of a head says.
enum Seen {
    Empty,
    RequestLine {
        connect: bool,
    },
    /// A header that matters (with a `Content-Length` value, `None` when not a number), or
    /// any other.
    Header(Kind, Option<u64>),
}

impl Seen {
    /// A line without its line end; `header` once the request line has been seen.
    fn of(line: &[u8], header: bool) -> Seen {
        if line.is_empty() {
            return Seen::Empty;
        }
        if !header {
            return Seen::RequestLine { connect: line.starts_with(b"CONNECT ") };
        }
        let named = |name: &[u8]| {
            let value = line.get(name.len() + 1..)?;
            (line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name)).then_some(value)
        };
        // Only three names matter, and they start with three letters.
        match line[0] | 0x20 {
            b'c' => match named(b"content-length") {
                Some(value) => Seen::Header(Kind::ContentLength, length(value)),
                None => Seen::Header(Kind::Other, None),
            },
            b't' if named(b"transfer-encoding").is_some() => Seen::Header(Kind::TransferEncoding, None),
            b'u' if named(b"upgrade").is_some() => Seen::Header(Kind::Upgrade, None),
            _ => Seen::Header(Kind::Other, None),
        }
    }
}

/// A `Content-Length` value: digits between optional whitespace.
fn length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

impl Line {
    /// What the line, read whole, said: as [`Seen::of`] would.
    fn seen(self) -> Seen {
        if self.len == 0 || (self.len == 1 && self.name[0] == b'\r') {
            Seen::Empty
        } else if !self.header {
            Seen::RequestLine { connect: self.method == *b"CONNECT " }
        } else {
            Seen::Header(self.kind, self.value.filter(|_| self.digits))
        }
    }

    /// Reads `part`, the next bytes of the line (without its `\n`).
    fn read(&mut self, part: &[u8], header: bool) {
        self.header = header;
        let mut part = part;
        let len = usize::from(self.len);
        if !header && len < self.method.len() {
            let n = (self.method.len() - len).min(part.len());
            self.method[len..len + n].copy_from_slice(&part[..n]);
        }
        self.len = u8::try_from(len + part.len()).unwrap_or(u8::MAX);
        if !self.named {
            for (i, &b) in part.iter().enumerate() {
                if b == b':' && header {
                    self.named = true;
                    self.kind = match &self.name[..usize::from(self.name_len)] {
                        b"content-length" => Kind::ContentLength,
                        b"transfer-encoding" => Kind::TransferEncoding,
                        b"upgrade" => Kind::Upgrade,
                        _ => Kind::Other,
                    };
                    self.value = Some(0);
                    part = &part[i + 1..];
                    break;
                }
                if usize::from(self.name_len) == NAME_MAX {
                    // Longer than any name that matters: the rest is not looked at.
                    self.named = true;
                    return;
                }
                self.name[usize::from(self.name_len)] = b.to_ascii_lowercase();
                self.name_len += 1;
            }
            if !self.named {
                return;
            }
        }
        if self.kind != Kind::ContentLength {
            return;
        }
        for &b in part {
            match b {
                b' ' | b'\t' | b'\r' => self.digits_done = self.digits,
                b'0'..=b'9' if !self.digits_done => {
                    self.digits = true;
                    self.value = self.value.and_then(|v| v.checked_mul(10)?.checked_add(u64::from(b - b'0')));
                }
                // Not a length hyper accepts: it refuses the request, unless a
                // `Transfer-Encoding` makes it ignore the length, which is what is looked for.
                _ => self.value = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Scanner {
        let mut s = Scanner::new();
        for piece in pieces {
            s.scan(piece);
        }
        s
    }

    #[test]
    fn a_head_with_both_framing_headers_is_found_in_either_order_and_any_case() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n",
            "POST / HTTP/1.1\nTransfer-Encoding: chunked\ncontent-length: abc\n\n",
            "\r\n\r\nPOST / HTTP/1.1\r\nTRANSFER-ENCODING:chunked\r\ncontent-length:0\r\n\r\n",
        ] {
            assert_eq!(scan_all(&[head.as_bytes()]).ambiguous(), Some(0), "{head:?}");
            // A byte at a time.
            let bytes: Vec<&[u8]> = head.as_bytes().chunks(1).collect();
            assert_eq!(scan_all(&bytes).ambiguous(), Some(0), "{head:?} byte by byte");
        }
    }

    #[test]
    fn bodies_are_skipped_so_their_bytes_are_never_read_as_heads() {
        let smuggled = "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST /a HTTP/1.1\r\ncontent-length: {}\r\n\r\n{smuggled}\
             POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext=1\r\n{smuggled}\r\n0\r\nx-trailer: {smuggled}\r\n\r\n\
             GET /c HTTP/1.1\r\nhost: x\r\n\r\n",
            smuggled.len(),
            smuggled.len(),
        );
        let s = scan_all(&[stream.as_bytes()]);
        assert_eq!(s.ambiguous(), None);
        assert_eq!(s.heads, 3);
        // The same heads with the smuggled one as the fourth request.
        let s = scan_all(&[stream.as_bytes(), smuggled.as_bytes()]);
        assert_eq!(s.ambiguous(), Some(3));
    }

    #[test]
    fn it_stays_small_a_parked_connection_holds_it() {
        assert!(std::mem::size_of::<Scanner>() <= 96, "{}", std::mem::size_of::<Scanner>());
    }

    #[test]
    fn scanning_stops_after_a_protocol_switch() {
        let upgrade = "GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        let both = "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(scan_all(&[upgrade.as_bytes(), both.as_bytes()]).ambiguous(), None);
        let connect = "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n";
        assert_eq!(scan_all(&[connect.as_bytes(), both.as_bytes()]).ambiguous(), None);
    }

    /// One request of a generated stream.
    #[derive(Debug, Clone)]
    enum Req {
        Get,
        Sized(Vec<u8>),
        Chunked(Vec<Vec<u8>>, bool),
        Ambiguous,
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            Just(
                b"\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec()
            ),
            Just(b"0\r\n\r\n\n\n".to_vec()),
        ]
    }

    fn req() -> impl Strategy<Value = Req> {
        prop_oneof![
            3 => Just(Req::Get),
            3 => body().prop_map(Req::Sized),
            3 => (prop::collection::vec(body().prop_filter("a chunk", |c| !c.is_empty()), 0..4), any::<bool>())
                .prop_map(|(chunks, trailers)| Req::Chunked(chunks, trailers)),
            1 => Just(Req::Ambiguous),
        ]
    }

    fn write(req: &Req, out: &mut Vec<u8>) {
        match req {
            Req::Get => out.extend_from_slice(
                b"GET /x HTTP/1.1\r\nHost: a\r\nX-Long-Header-Name-Beyond-Seventeen: 1\r\n\r\n",
            ),
            Req::Sized(body) => {
                out.extend_from_slice(
                    format!("PUT /x HTTP/1.1\r\nContent-Length:  {} \r\n\r\n", body.len()).as_bytes(),
                );
                out.extend_from_slice(body);
            }
            Req::Chunked(chunks, trailers) => {
                out.extend_from_slice(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
                for chunk in chunks {
                    out.extend_from_slice(format!("{:X} ; name=value\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailers {
                    out.extend_from_slice(b"x-checksum: 1\r\ncontent-length: 9\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            Req::Ambiguous => out.extend_from_slice(
                b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// However a stream of requests is cut into reads, the scanner counts its heads and
        /// finds the first ambiguous one, never a head inside a body.
        #[test]
        fn finds_the_first_ambiguous_head_however_the_stream_is_read(
            reqs in prop::collection::vec(req(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            for req in &reqs {
                write(req, &mut stream);
            }
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            at.push(0);
            at.push(stream.len());
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let s = scan_all(&pieces);
            let first = reqs.iter().position(|r| matches!(r, Req::Ambiguous));
            prop_assert_eq!(s.ambiguous(), first.map(|i| i as u64));
            if first.is_none() {
                prop_assert_eq!(s.heads, reqs.len() as u64);
            }
        }
    }
}
