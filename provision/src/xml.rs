//! A light, span-keeping view of an XML document.
//!
//! The document is tokenized with `xmlparser` (which reports byte spans) and
//! turned into a flat element tree that records, for every element, where its
//! start tag, content and end tag sit in the original text. Nothing is ever
//! re-serialised: callers compute byte ranges and splice text into the
//! original, so comments, attribute order, quoting and whitespace survive.

use std::ops::Range;

use crate::error::Error;

/// Namespace URI of libvirt's QEMU extension elements (`<qemu:commandline>`).
/// libvirt's namespace for `<qemu:commandline>`.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// One attribute of a start tag.
#[derive(Debug, Clone)]
pub struct Attr<'a> {
    /// Namespace prefix (`qemu` in `qemu:arg`), empty if none.
    pub prefix: &'a str,
    /// Local name.
    pub local: &'a str,
    /// The raw (still escaped) value, without quotes.
    pub raw: &'a str,
    /// The whole `name="value"` text.
    pub span: Range<usize>,
}

impl Attr<'_> {
    /// The unescaped value.
    pub fn value(&self) -> Result<String, Error> {
        unescape(self.raw, self.span.start)
    }
}

/// A child node of an element, by byte range.
#[derive(Debug, Clone)]
pub enum Node {
    /// An element: its index in [`Doc::elements`].
    Element(usize),
    /// Character data.
    Text(Range<usize>),
    /// A comment.
    Comment {
        /// The whole `<!-- -->`.
        span: Range<usize>,
        /// Its text.
        text: Range<usize>,
    },
    /// A CDATA section.
    Cdata {
        /// The whole `<![CDATA[ ]]>`.
        span: Range<usize>,
        /// Its text.
        text: Range<usize>,
    },
    /// Anything else (processing instruction, declaration).
    Other(Range<usize>),
}

/// One element and where its pieces are in the text.
#[derive(Debug, Clone)]
pub struct Element<'a> {
    /// Namespace prefix, empty if none.
    pub prefix: &'a str,
    /// Local name.
    pub local: &'a str,
    /// Attributes, in document order.
    pub attrs: Vec<Attr<'a>>,
    /// Offset of `<`.
    pub start: usize,
    /// Offset just after the `>` (or `/>`) of the start tag.
    pub start_tag_end: usize,
    /// Offset of the `</` of the end tag (equals `start_tag_end` when self-closing).
    pub content_end: usize,
    /// Offset just after the end tag.
    pub end: usize,
    /// Whether it is written `<name/>`.
    pub self_closing: bool,
    /// Index of the parent element; `None` for the root.
    pub parent: Option<usize>,
    /// Child nodes, in document order.
    pub children: Vec<Node>,
}

impl<'a> Element<'a> {
    /// The raw value of an attribute without prefix.
    pub fn attr(&self, local: &str) -> Option<&Attr<'a>> {
        self.attrs
            .iter()
            .find(|a| a.prefix.is_empty() && a.local == local)
    }

    /// Unescaped attribute value, `None` if absent.
    pub fn attr_value(&self, local: &str) -> Result<Option<String>, Error> {
        self.attr(local).map(Attr::value).transpose()
    }
}

/// A parsed document: the text and its elements (index 0 is the root).
#[derive(Debug)]
pub struct Doc<'a> {
    /// The document text.
    pub text: &'a str,
    /// Every element, in document order.
    pub elements: Vec<Element<'a>>,
}

fn malformed(pos: usize, msg: impl Into<String>) -> Error {
    Error::Malformed {
        pos,
        msg: msg.into(),
    }
}

impl<'a> Doc<'a> {
    /// Parse `text`; any well-formedness problem is an [`Error::Malformed`].
    pub fn parse(text: &'a str) -> Result<Doc<'a>, Error> {
        let mut elements: Vec<Element<'a>> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        // The element whose start tag is being read (between `<name` and `>`).
        let mut opening: Option<usize> = None;
        let mut root_closed = false;

        for token in xmlparser::Tokenizer::from(text) {
            let token = token.map_err(|e| {
                let pos = e.pos();
                malformed(line_col_to_offset(text, pos.row, pos.col), e.to_string())
            })?;
            use xmlparser::Token;
            match token {
                Token::ElementStart {
                    prefix,
                    local,
                    span,
                } => {
                    if root_closed || (stack.is_empty() && !elements.is_empty()) {
                        return Err(malformed(span.start(), "more than one root element"));
                    }
                    let idx = elements.len();
                    let parent = stack.last().copied();
                    elements.push(Element {
                        prefix: prefix.as_str(),
                        local: local.as_str(),
                        attrs: Vec::new(),
                        start: span.start(),
                        start_tag_end: 0,
                        content_end: 0,
                        end: 0,
                        self_closing: false,
                        parent,
                        children: Vec::new(),
                    });
                    if let Some(p) = parent {
                        elements[p].children.push(Node::Element(idx));
                    }
                    opening = Some(idx);
                }
                Token::Attribute {
                    prefix,
                    local,
                    value,
                    span,
                } => {
                    let idx = opening.ok_or_else(|| malformed(span.start(), "stray attribute"))?;
                    // Validate entity references now so later reads cannot fail oddly.
                    unescape(value.as_str(), value.start())?;
                    let el = &mut elements[idx];
                    if el
                        .attrs
                        .iter()
                        .any(|a| a.prefix == prefix.as_str() && a.local == local.as_str())
                    {
                        return Err(malformed(span.start(), "duplicate attribute"));
                    }
                    el.attrs.push(Attr {
                        prefix: prefix.as_str(),
                        local: local.as_str(),
                        raw: value.as_str(),
                        span: span.range(),
                    });
                }
                Token::ElementEnd { end, span } => match end {
                    xmlparser::ElementEnd::Open => {
                        let idx = opening
                            .take()
                            .ok_or_else(|| malformed(span.start(), "stray '>'"))?;
                        elements[idx].start_tag_end = span.end();
                        stack.push(idx);
                    }
                    xmlparser::ElementEnd::Empty => {
                        let idx = opening
                            .take()
                            .ok_or_else(|| malformed(span.start(), "stray '/>'"))?;
                        let el = &mut elements[idx];
                        el.start_tag_end = span.end();
                        el.content_end = span.end();
                        el.end = span.end();
                        el.self_closing = true;
                        if stack.is_empty() {
                            root_closed = true;
                        }
                    }
                    xmlparser::ElementEnd::Close(prefix, local) => {
                        let idx = stack
                            .pop()
                            .ok_or_else(|| malformed(span.start(), "end tag without start tag"))?;
                        let el = &mut elements[idx];
                        if el.prefix != prefix.as_str() || el.local != local.as_str() {
                            return Err(malformed(
                                span.start(),
                                format!(
                                    "end tag </{}> does not match <{}>",
                                    qname(prefix.as_str(), local.as_str()),
                                    qname(el.prefix, el.local)
                                ),
                            ));
                        }
                        el.content_end = span.start();
                        el.end = span.end();
                        if stack.is_empty() {
                            root_closed = true;
                        }
                    }
                },
                Token::Text { text: t } => {
                    unescape(t.as_str(), t.start())?;
                    match stack.last() {
                        Some(&p) => elements[p].children.push(Node::Text(t.range())),
                        None => {
                            if !t.as_str().trim().is_empty() {
                                return Err(malformed(t.start(), "text outside the root element"));
                            }
                        }
                    }
                }
                Token::Cdata { text: t, span } => match stack.last() {
                    Some(&p) => elements[p].children.push(Node::Cdata {
                        span: span.range(),
                        text: t.range(),
                    }),
                    None => return Err(malformed(span.start(), "CDATA outside the root element")),
                },
                Token::Comment { text: t, span } => {
                    if let Some(&p) = stack.last() {
                        elements[p].children.push(Node::Comment {
                            span: span.range(),
                            text: t.range(),
                        });
                    }
                }
                Token::ProcessingInstruction { span, .. } => {
                    if let Some(&p) = stack.last() {
                        elements[p].children.push(Node::Other(span.range()));
                    }
                }
                _ => {}
            }
        }
        if let Some(&idx) = stack.last() {
            return Err(malformed(
                text.len(),
                format!(
                    "document ends inside <{}>",
                    qname(elements[idx].prefix, elements[idx].local)
                ),
            ));
        }
        if opening.is_some() {
            return Err(malformed(text.len(), "document ends inside a start tag"));
        }
        if elements.is_empty() {
            return Err(malformed(0, "no root element"));
        }
        let doc = Doc { text, elements };
        doc.check_prefixes()?;
        Ok(doc)
    }

    /// Every prefix an element or attribute uses must be declared in scope
    /// (namespace well-formedness): an undeclared `qemu:` would make a tool
    /// that adds the declaration change what the existing elements mean.
    fn check_prefixes(&self) -> Result<(), Error> {
        for (i, e) in self.elements.iter().enumerate() {
            let attr_prefixes = e
                .attrs
                .iter()
                .map(|a| a.prefix)
                .filter(|p| !p.is_empty() && *p != "xmlns");
            for prefix in std::iter::once(e.prefix)
                .filter(|p| !p.is_empty())
                .chain(attr_prefixes)
            {
                if prefix != "xml" && self.resolve_prefix(i, prefix).is_none() {
                    return Err(malformed(
                        e.start,
                        format!(
                            "<{}> uses the namespace prefix {prefix:?}, which no xmlns:{prefix} declares",
                            qname(e.prefix, e.local)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The root element.
    pub fn root(&self) -> &Element<'a> {
        &self.elements[0]
    }

    /// Element children of `idx`.
    pub fn child_elements(&self, idx: usize) -> impl Iterator<Item = usize> + '_ {
        self.elements[idx].children.iter().filter_map(|n| match n {
            Node::Element(i) => Some(*i),
            _ => None,
        })
    }

    /// First child element of `idx` with no prefix and the given local name.
    pub fn child(&self, idx: usize, local: &str) -> Option<usize> {
        self.child_elements(idx).find(|&c| {
            let e = &self.elements[c];
            e.prefix.is_empty() && e.local == local
        })
    }

    /// The namespace URI (unescaped) bound to `prefix` in scope at element `idx`.
    pub fn resolve_prefix(&self, idx: usize, prefix: &str) -> Option<String> {
        let mut cur = Some(idx);
        while let Some(i) = cur {
            let el = &self.elements[i];
            for a in &el.attrs {
                let bound = if prefix.is_empty() {
                    a.prefix.is_empty() && a.local == "xmlns"
                } else {
                    a.prefix == "xmlns" && a.local == prefix
                };
                if bound {
                    return a.value().ok();
                }
            }
            cur = el.parent;
        }
        None
    }

    /// Does element `idx` live in namespace `ns` with local name `local`?
    pub fn is_ns_element(&self, idx: usize, ns: &str, local: &str) -> bool {
        let e = &self.elements[idx];
        e.local == local && self.resolve_prefix(idx, e.prefix).as_deref() == Some(ns)
    }

    /// Concatenated, unescaped character data directly inside `idx`.
    pub fn text_of(&self, idx: usize) -> Result<String, Error> {
        let mut out = String::new();
        for n in &self.elements[idx].children {
            match n {
                Node::Text(r) => out.push_str(&unescape(&self.text[r.clone()], r.start)?),
                Node::Cdata { text, .. } => out.push_str(&self.text[text.clone()]),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `prefix:local`, or `local` when there is no prefix.
pub fn qname(prefix: &str, local: &str) -> String {
    if prefix.is_empty() {
        local.to_string()
    } else {
        format!("{prefix}:{local}")
    }
}

fn line_col_to_offset(text: &str, row: u32, col: u32) -> usize {
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i + 1 == row as usize {
            let col_chars = (col as usize).saturating_sub(1);
            return offset
                + line
                    .char_indices()
                    .nth(col_chars)
                    .map_or(line.len(), |(b, _)| b);
        }
        offset += line.len();
    }
    text.len()
}

/// Decode the five predefined entities and character references.
pub fn unescape(raw: &str, pos: usize) -> Result<String, Error> {
    if !raw.contains('&') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut at = pos;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .filter(|&s| s <= 12)
            .ok_or_else(|| malformed(at + amp, "unterminated entity reference"))?;
        let name = &after[..semi];
        let ch = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse::<u32>().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| {
                    malformed(at + amp, format!("unknown entity reference &{name};"))
                })?
            }
        };
        out.push(ch);
        let consumed = amp + 1 + semi + 1;
        rest = &rest[consumed..];
        at += consumed;
    }
    out.push_str(rest);
    Ok(out)
}

/// Escape text for an attribute value quoted with `quote` (`'` or `"`).
pub fn escape_attr(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '\'' if quote == '\'' => out.push_str("&apos;"),
            '"' if quote == '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape character data.
pub fn escape_text(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Apply non-overlapping `(range, replacement)` edits to `text`.
pub fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text.to_string();
    for (r, s) in edits {
        out.replace_range(r, &s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_namespaces() {
        let t = "<?xml version='1.0'?>\n<!-- c -->\n<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>\n  <uuid>x</uuid>\n  <q:commandline/>\n</domain>\n";
        let d = Doc::parse(t).unwrap();
        assert_eq!(d.root().local, "domain");
        let u = d.child(0, "uuid").unwrap();
        assert_eq!(d.text_of(u).unwrap(), "x");
        let c = d
            .child_elements(0)
            .find(|&i| d.is_ns_element(i, QEMU_NS, "commandline"))
            .unwrap();
        assert!(d.elements[c].self_closing);
        assert_eq!(
            &t[d.elements[c].start..d.elements[c].end],
            "<q:commandline/>"
        );
    }

    #[test]
    fn declared_prefixes_parse() {
        Doc::parse("<a xmlns:q='urn:x'><q:b q:y='1' xml:lang='en'/></a>").expect("declared");
        Doc::parse("<a><q:b xmlns:q='urn:x'/></a>").expect("declared on the element");
    }

    #[test]
    fn malformed_inputs() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<a>&bogus;</a>",
            "<a x='1' x='2'/>",
            "text",
            // Prefixes nobody declares (found by the domain_xml fuzz target).
            "<a><q:b/></a>",
            "<a q:x='1'/>",
            "<a xAlns:q='urn:x'><q:b/></a>",
        ] {
            assert!(
                matches!(Doc::parse(bad), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unescape_refs() {
        assert_eq!(unescape("a&amp;b&#x41;&#66;&apos;", 0).unwrap(), "a&bAB'");
        assert_eq!(escape_attr("a'b\"&<", '\''), "a&apos;b\"&amp;&lt;");
    }
}
