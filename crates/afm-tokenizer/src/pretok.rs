//! The GPT-2 / `r50k_base` pre-tokenizer without a regex engine.
//!
//! tiktoken splits text with the fancy-regex pattern
//!
//! ```text
//! '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
//! ```
//!
//! (leftmost-first alternation, applied at the end of the previous match).
//! Every character is exactly one of four classes: letter (`\p{L}`),
//! number (`\p{N}`), white space (`\s`, Unicode `White_Space`) or other
//! (no `White_Space` character is a letter or a number). Tried in order at a
//! position, the alternatives reduce to:
//!
//! 1. `'` followed by `s`, `d`, `m`, `t`, `ll`, `ve` or `re` (ASCII,
//!    case-sensitive): that contraction;
//! 2. an ASCII space followed by a letter, number or other character: the
//!    space plus the maximal run of that class;
//! 3. a letter, number or other character: the maximal run of its class;
//! 4. white space: the maximal run of white space, W, spanning k characters.
//!    If the run reaches the end of the text it is the piece (`\s++$`).
//!    Otherwise a non-space follows; `\s+(?!\S)` backtracks one character,
//!    so for k >= 2 the piece is the run minus its last character (which
//!    starts the next piece, through rule 2 when it is an ASCII space), and
//!    for k = 1 the lookahead fails and `\s` takes the single character.
//!
//! The possessive quantifiers never need to give anything back because
//! nothing follows them in their alternative. The classes come from
//! `regex-syntax`, the crate fancy-regex hands `\p{L}`, `\p{N}` and `\s` to,
//! so the Unicode tables are the very ones tiktoken matches with.

use std::sync::OnceLock;

/// `\p{L}`.
pub(crate) const LETTER: u8 = 0;
/// `\p{N}`.
pub(crate) const NUMBER: u8 = 1;
/// `\s` (Unicode `White_Space`).
pub(crate) const SPACE: u8 = 2;
/// Everything else: `[^\s\p{L}\p{N}]`.
pub(crate) const OTHER: u8 = 3;

/// Character class of every Unicode scalar value: a direct table for the
/// Basic Multilingual Plane and sorted ranges above it.
pub(crate) struct CharClasses {
    bmp: Box<[u8; 0x10000]>,
    /// `(first, last, class)` for code points above U+FFFF, sorted, disjoint.
    astral: Vec<(u32, u32, u8)>,
}

/// The code point ranges of a one-class pattern, as regex-syntax (and so
/// the regex crate under fancy-regex) defines them.
fn ranges_of(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern)
        .unwrap_or_else(|e| panic!("built-in class {pattern:?} must parse: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("built-in class {pattern:?} parsed as {other:?}"),
    }
}

impl CharClasses {
    fn build() -> Self {
        let mut bmp: Box<[u8; 0x10000]> = Box::new([OTHER; 0x10000]);
        let mut astral = Vec::new();
        for (pattern, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in ranges_of(pattern) {
                for c in lo..=hi.min(0xFFFF) {
                    bmp[c as usize] = class;
                }
                if hi > 0xFFFF {
                    astral.push((lo.max(0x10000), hi, class));
                }
            }
        }
        astral.sort_unstable();
        Self { bmp, astral }
    }

    /// The shared table (built once, ~70 KB).
    pub(crate) fn get() -> &'static Self {
        static CLASSES: OnceLock<CharClasses> = OnceLock::new();
        CLASSES.get_or_init(Self::build)
    }

    /// Class of code point `c`.
    #[inline]
    pub(crate) fn of(&self, c: u32) -> u8 {
        if c < 0x10000 {
            self.bmp[c as usize]
        } else {
            let i = self.astral.partition_point(|r| r.1 < c);
            match self.astral.get(i) {
                Some(&(lo, _, class)) if lo <= c => class,
                _ => OTHER,
            }
        }
    }

    /// Class and UTF-8 length of the character starting at byte `i` of
    /// `s` (a `str`'s bytes, `i` a character boundary inside it).
    #[inline(always)]
    fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
        let b0 = s[i];
        if b0 < 0x80 {
            return (self.bmp[b0 as usize], 1);
        }
        let cont = |k: usize| (s.get(i + k).copied().unwrap_or(0x80) & 0x3F) as u32;
        let (c, len) = if b0 < 0xE0 {
            (((b0 as u32 & 0x1F) << 6) | cont(1), 2)
        } else if b0 < 0xF0 {
            (((b0 as u32 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
        } else {
            (
                ((b0 as u32 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
                4,
            )
        };
        (self.of(c), len)
    }

    /// End of the maximal run of `class` characters starting at `i`.
    #[inline(always)]
    fn run(&self, s: &[u8], mut i: usize, class: u8) -> usize {
        while i < s.len() {
            let b = s[i];
            if b < 0x80 {
                if self.bmp[b as usize] != class {
                    break;
                }
                i += 1;
            } else {
                let (c, len) = self.at(s, i);
                if c != class {
                    break;
                }
                i += len;
            }
        }
        i
    }

    /// End (exclusive byte offset) of the piece starting at byte `i < s.len()`.
    #[inline]
    pub(crate) fn piece_end(&self, s: &[u8], i: usize) -> usize {
        let b = s[i];
        if b == b'\'' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(b's' | b'd' | b'm' | b't'), _) => return i + 2,
                (Some(b'l'), Some(b'l')) | (Some(b'v' | b'r'), Some(b'e')) => return i + 3,
                _ => {}
            }
        }
        let (class, len) = self.at(s, i);
        if class != SPACE {
            return self.run(s, i + len, class);
        }
        if b == b' ' && i + 1 < s.len() {
            let (next, len) = self.at(s, i + 1);
            if next != SPACE {
                return self.run(s, i + 1 + len, next);
            }
        }
        // A run of white space: whole at the end of the text, else without
        // its last character when it has two or more.
        let mut last = i;
        let mut j = i + len;
        let mut count = 1usize;
        while j < s.len() {
            let (c, len) = self.at(s, j);
            if c != SPACE {
                break;
            }
            last = j;
            j += len;
            count += 1;
        }
        if j == s.len() || count == 1 {
            j
        } else {
            last
        }
    }
}

/// Iterator over the pre-tokenizer pieces of a text (see [`pieces`]).
#[derive(Clone)]
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    classes: &'static CharClasses,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.text.as_bytes();
        if self.pos >= s.len() {
            return None;
        }
        let start = self.pos;
        self.pos = self.classes.piece_end(s, start);
        self.text.get(start..self.pos)
    }
}

/// The pieces `r50k_base` splits `text` into before BPE: exactly the matches
/// of tiktoken's pattern (see the module docs), in order; they concatenate
/// back to `text`.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces {
        text,
        pos: 0,
        classes: CharClasses::get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        pieces(s).collect()
    }

    #[test]
    fn basic_splits() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("don't"), ["don", "'t"]);
        assert_eq!(split("I'LL we'll"), ["I", "'", "LL", " we", "'ll"]);
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("a\t\tb"), ["a", "\t", "\t", "b"]);
        assert_eq!(split("a  "), ["a", "  "]);
        assert_eq!(split("x\n\n  y"), ["x", "\n\n ", " y"]);
        assert_eq!(split(" 123 !!"), [" 123", " !!"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn classes() {
        let c = CharClasses::get();
        assert_eq!(c.of('a' as u32), LETTER);
        assert_eq!(c.of('é' as u32), LETTER);
        assert_eq!(c.of('漢' as u32), LETTER);
        assert_eq!(c.of('٣' as u32), NUMBER);
        assert_eq!(c.of('Ⅻ' as u32), NUMBER);
        assert_eq!(c.of(0xA0), SPACE);
        assert_eq!(c.of(0x3000), SPACE);
        assert_eq!(c.of(0x85), SPACE);
        assert_eq!(c.of(0x200B), OTHER); // zero-width space is not White_Space
        assert_eq!(c.of(0x301), OTHER); // combining acute: \p{M}
        assert_eq!(c.of(0x1F642), OTHER); // emoji
        assert_eq!(c.of(0x20000), LETTER); // CJK extension B
        assert_eq!(c.of(0x1D7CE), NUMBER); // mathematical bold digit zero
        assert_eq!(c.of(0x10FFFF), OTHER);
    }
}
