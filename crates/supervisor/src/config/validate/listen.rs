//! `[[app.listen]]`: an app's listening sockets (a TCP address or a Unix path each, a valid
//! `LISTEN_FDNAMES` name, a positive backlog), none listed twice.

use std::ops::Range;

use super::super::model::{ListenAddr, ListenerSpec};
use super::super::raw::{RawListen, Spanned};
use super::bounds::{MAX_BACKLOG, MAX_LISTENERS};
use super::{ConfigError, Validator, resolve};

/// Whether two listeners would bind the same socket (port 0 picks a fresh port each time, so
/// two of those never do).
pub(super) fn same_socket(a: &ListenAddr, b: &ListenAddr) -> bool {
    a == b && !matches!(b, ListenAddr::Tcp(t) if t.port() == 0)
}

impl Validator<'_> {
    /// The listeners of the app at `app` (`app[0]`), with where each one's address or path is in
    /// the file (for the check against the other apps' listeners).
    pub(super) fn listeners(
        &self,
        app: &str,
        raw: &[Spanned<RawListen>],
    ) -> Result<(Vec<ListenerSpec>, Vec<Range<usize>>), ConfigError> {
        let extra = raw.get(MAX_LISTENERS).map(Spanned::span);
        let key = format!("{app}.listen");
        self.count(extra, &key, raw.len(), MAX_LISTENERS, "listeners")?;
        let mut out: Vec<ListenerSpec> = Vec::with_capacity(raw.len());
        let mut spans = Vec::with_capacity(raw.len());
        for (i, table) in raw.iter().enumerate() {
            let (l, table_span) = (table.get_ref(), table.span());
            let key = format!("{app}.listen[{i}]");
            let (addr, addr_span) = match (&l.address, &l.path) {
                (Some(a), None) => {
                    let addr = self
                        .socket_addr(&format!("{key}.address"), a.get_ref())
                        .map_err(|e| self.located(e, a.span()))?;
                    (ListenAddr::Tcp(addr), a.span())
                }
                (None, Some(p)) => {
                    let path = resolve(&self.base, p.get_ref());
                    self.socket_path(p.span(), &format!("{key}.path"), &path)?;
                    (ListenAddr::Unix(path), p.span())
                }
                (Some(_), Some(_)) => {
                    return Err(self.err_at(
                        table_span,
                        key,
                        "give either `address` or `path`, not both",
                    ));
                }
                (None, None) => {
                    return Err(self.err_at(
                        table_span,
                        key,
                        "needs `address = \"host:port\"` or `path = \"/a/unix.sock\"`",
                    ));
                }
            };
            // A default name has no span of its own: the table's.
            let (name, name_span) = match &l.name {
                Some(n) => (n.get_ref().clone(), n.span()),
                None => (format!("listen{i}"), table_span),
            };
            if name.is_empty()
                || name.len() > 255
                || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
            {
                return Err(self.err_at(name_span, format!("{key}.name"), format!("{name:?} is not a valid fd name (printable ASCII, no ':', at most 255 bytes)")));
            }
            if let Some(prev) = out.iter().find(|o| o.name == name) {
                return Err(self.err_at(
                    name_span,
                    format!("{key}.name"),
                    format!("{name:?} is already used by {}", prev.key),
                ));
            }
            if let Some(prev) = out.iter().find(|o| same_socket(&o.addr, &addr)) {
                return Err(self.err_at(
                    addr_span,
                    key,
                    format!("{addr} is already listed as {}", prev.key),
                ));
            }
            let backlog = match &l.backlog {
                None => 1024,
                Some(b) if *b.get_ref() <= 0 || *b.get_ref() > MAX_BACKLOG => {
                    return Err(self.err_at(
                        b.span(),
                        format!("{key}.backlog"),
                        if *b.get_ref() <= 0 {
                            "must be positive".to_string()
                        } else {
                            format!("must be at most {MAX_BACKLOG}")
                        },
                    ));
                }
                Some(b) => *b.get_ref(),
            };
            out.push(ListenerSpec {
                name,
                addr,
                backlog,
                key,
                // The app's `balance` is laid over its TCP listeners once it is read.
                balance: crate::config::Balance::Shared,
            });
            spans.push(addr_span);
        }
        Ok((out, spans))
    }
}
