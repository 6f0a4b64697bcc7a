//! Where an edit goes and how it is written so that it matches the
//! document: indentation, line endings, attribute quotes; and the span that
//! removes an element again.

use std::ops::Range;

use super::domain::Domain;

pub(super) fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// The indentation of whitespace `ws`'s last line, if `ws` spans a line break.
fn last_line_indent(ws: &str) -> Option<String> {
    ws.rfind('\n')
        .map(|i| ws[i + 1..].trim_end_matches('\r').to_string())
}

impl Domain<'_> {
    /// Quote character used by the document's attributes (`'` by default).
    pub(super) fn quote(&self) -> char {
        self.doc
            .root()
            .attrs
            .first()
            .and_then(|a| self.text()[..a.span.end].chars().last())
            .filter(|&c| c == '"')
            .unwrap_or('\'')
    }

    pub(super) fn newline(&self) -> &'static str {
        if self.text().contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// Whitespace that indents the line `pos` sits on, if only whitespace precedes it.
    pub(super) fn line_indent(&self, pos: usize) -> Option<String> {
        let before = &self.text()[..pos];
        let ws_start = before.trim_end_matches(is_ws).len();
        last_line_indent(&before[ws_start..])
    }

    /// Indentation unit guessed from the root's first child.
    pub(super) fn unit(&self) -> String {
        let root_indent = self.line_indent(0).unwrap_or_default();
        self.doc
            .child_elements(0)
            .next()
            .and_then(|c| self.line_indent(self.doc.elements[c].start))
            .and_then(|ci| ci.strip_prefix(&root_indent).map(str::to_string))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "  ".to_string())
    }

    /// Where and how to append a new last child to element `parent`.
    pub(super) fn layout(&self, parent: usize) -> Layout {
        let p = &self.doc.elements[parent];
        let text = self.text();
        let lo = p.start_tag_end;
        let hi = p.content_end;
        let pos = lo + text[lo..hi].trim_end_matches(is_ws).len();
        let parent_indent = self.line_indent(p.start).unwrap_or_default();
        let unit = self.unit();
        let last_el = self.doc.child_elements(parent).last();
        let indent = if let Some(e) = last_el {
            self.line_indent(self.doc.elements[e].start)
        } else if pos > lo {
            // Only text or comments: indent like the first of them.
            let lead = &text[lo..hi];
            last_line_indent(&lead[..lead.len() - lead.trim_start_matches(is_ws).len()])
        } else if text[lo..hi].contains('\n') {
            Some(format!("{parent_indent}{unit}"))
        } else {
            None
        };
        let unit = match &indent {
            Some(ind) if ind.len() > parent_indent.len() && ind.starts_with(&parent_indent) => {
                ind[parent_indent.len()..].to_string()
            }
            _ => unit,
        };
        Layout {
            pos,
            line: indent.map(|ind| (self.newline(), ind)),
            unit,
        }
    }
}

/// Where to insert and how to indent.
pub(super) struct Layout {
    pub(super) pos: usize,
    /// `Some((newline, indent))` when children sit on their own lines.
    pub(super) line: Option<(&'static str, String)>,
    pub(super) unit: String,
}

impl Layout {
    /// Render one element given as lines with nesting depths (0 = the element itself).
    pub(super) fn render(&self, lines: &[(usize, String)]) -> String {
        let mut out = String::new();
        for (depth, l) in lines {
            if let Some((nl, ind)) = &self.line {
                out.push_str(nl);
                out.push_str(ind);
                for _ in 0..*depth {
                    out.push_str(&self.unit);
                }
            }
            out.push_str(l);
        }
        out
    }
}

/// The range that removes element `[start, end)` and the line break plus
/// indentation that [`Layout::render`] put before it.
pub(super) fn removal(text: &str, start: usize, end: usize) -> Range<usize> {
    let before = &text[..start];
    let ws_start = before.trim_end_matches(is_ws).len();
    let ws = &before[ws_start..];
    match ws.rfind('\n') {
        Some(i) => {
            let mut s = ws_start + i;
            if s > 0 && text.as_bytes()[s - 1] == b'\r' && s > ws_start {
                s -= 1;
            }
            s..end
        }
        None => start..end,
    }
}
