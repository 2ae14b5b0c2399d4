//! Moderation: the sensitive-word filter on the `text` of every send (IM-MECHANISMS.md, seed
//! 001 "sensitive-word check").
//!
//! The word list comes from a file (one word per line, `#` comments); it is normalised like the
//! text and compiled into one Aho-Corasick automaton (leftmost-longest, so the whole of the
//! longest listed word is masked). Text is normalised before matching: zero-width characters
//! are dropped, each character is NFKC-normalised (which also maps full-width forms to
//! half-width) and lower-cased, so `Ｂａｄ` and `b\u{200b}ad` match `bad`. Each normalised byte
//! remembers the original character it came from, so masking replaces the original characters.
//! Normalisation is per character: a base letter followed by a combining mark is not composed.
//!
//! Action: `reject` fails the send with `CONTENT_REJECTED` (nothing stored) or `mask` stores and
//! delivers the text with each match replaced by `*`. Reload swaps the automaton atomically; a
//! send in progress keeps the one it started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use mqim_schemas::v1::ErrorCode;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::error::ImError;
use crate::store::NewMessage;

/// What to do with a send whose text contains a listed word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `CONTENT_REJECTED`; nothing stored.
    #[default]
    Reject,
    /// Stored and delivered with every match replaced by `*`.
    Mask,
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Action::Reject),
            "mask" => Ok(Action::Mask),
            other => Err(format!(
                "unknown moderation action {other:?}: reject or mask"
            )),
        }
    }
}

/// The `[moderation]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationConfig {
    /// Word list, one per line; unset: no filter.
    pub words_file: Option<PathBuf>,
    pub action: Action,
}

struct Filter {
    automaton: AhoCorasick,
    words: usize,
    action: Action,
}

/// The filter of one node; empty (everything passes) until [`Moderation::load`].
#[derive(Default)]
pub struct Moderation {
    current: RwLock<Option<Arc<Filter>>>,
    cfg: RwLock<ModerationConfig>,
}

impl Moderation {
    /// Compiles the list `cfg` names (none: no filter) and makes it current. Returns the number
    /// of words. On error the previous filter stays.
    pub fn load(&self, cfg: &ModerationConfig) -> anyhow::Result<usize> {
        let filter = match &cfg.words_file {
            Some(path) => Some(Arc::new(compile(path, cfg.action)?)),
            None => None,
        };
        let n = filter.as_ref().map_or(0, |f| f.words);
        *self.current.write() = filter;
        *self.cfg.write() = cfg.clone();
        Ok(n)
    }

    /// Re-reads the word file last loaded (SIGHUP, `POST /api/v1/moderation/reload`).
    pub fn reload(&self) -> anyhow::Result<usize> {
        let cfg = self.cfg.read().clone();
        self.load(&cfg)
    }

    /// Checks a send's text: unchanged when clean, masked or rejected per the action.
    pub fn apply(&self, mut msg: NewMessage) -> Result<NewMessage, ImError> {
        msg.text = self.apply_text(msg.text.take())?;
        Ok(msg)
    }

    /// The filter on one message text (a group message's, say): passed, masked, or refused.
    pub fn apply_text(&self, text: Option<String>) -> Result<Option<String>, ImError> {
        let Some(filter) = self.current.read().clone() else {
            return Ok(text);
        };
        text.map(|t| filter.check(t)).transpose()
    }
}

fn compile(path: &Path, action: Action) -> anyhow::Result<Filter> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading word list {}: {e}", path.display()))?;
    let words: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|w| normalise(w).0)
        .filter(|w| !w.is_empty())
        .collect();
    let automaton = AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&words)?;
    Ok(Filter {
        automaton,
        words: words.len(),
        action,
    })
}

impl Filter {
    fn check(&self, text: String) -> Result<String, ImError> {
        // The common case, clean text, pays for one normalised copy and one scan.
        if !self.automaton.is_match(matching_form(&text).as_ref()) {
            return Ok(text);
        }
        if self.action == Action::Reject {
            return Err(ImError::new(
                ErrorCode::ContentRejected,
                "the message contains a word this server does not accept",
            ));
        }
        let (norm, origin) = normalise(&text);
        // Original character indexes to mask.
        let mut masked = vec![false; text.chars().count()];
        for m in self.automaton.find_iter(&norm) {
            let (first, last) = (origin[m.start()], origin[m.end() - 1]);
            masked[first..=last].iter_mut().for_each(|x| *x = true);
        }
        Ok(text
            .chars()
            .zip(masked)
            .map(|(c, m)| if m { '*' } else { c })
            .collect())
    }
}

/// Zero-width and invisible formatting characters dropped before matching.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

/// The matching form of `s` (what [`normalise`] gives, without the origin map).
fn matching_form(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(s);
    }
    if s.is_ascii() {
        return std::borrow::Cow::Owned(s.to_ascii_lowercase());
    }
    std::borrow::Cow::Owned(normalise(s).0)
}

/// The matching form of `s`, and for each of its bytes the index of the character of `s` it
/// came from.
fn normalise(s: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(s.len());
    let mut origin = Vec::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        if invisible(c) {
            continue;
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            origin.push(i);
            continue;
        }
        for n in std::iter::once(c).nfkc() {
            for l in n.to_lowercase() {
                out.push(l);
                origin.extend(std::iter::repeat_n(i, l.len_utf8()));
            }
        }
    }
    (out, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(words: &str, action: Action) -> Moderation {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("words.txt");
        std::fs::write(&path, words).unwrap();
        let m = Moderation::default();
        m.load(&ModerationConfig {
            words_file: Some(path),
            action,
        })
        .unwrap();
        m
    }

    fn msg(text: &str) -> NewMessage {
        NewMessage {
            from: "a".into(),
            to: "b".into(),
            client_msg_id: "1".into(),
            msg_id: 0,
            ts: 0,
            text: Some(text.into()),
            body: None,
            kind: None,
        }
    }

    fn masked(m: &Moderation, text: &str) -> String {
        m.apply(msg(text)).unwrap().text.unwrap()
    }

    #[test]
    fn full_width_case_and_zero_width_spellings_match() {
        let m = filter("# a comment\nbad\n", Action::Reject);
        for text in ["bad", "BAD", "so Ｂａｄ!", "b\u{200b}ad", "ｂ\u{feff}Ａd"] {
            let e = m.apply(msg(text)).unwrap_err();
            assert_eq!(e.code, ErrorCode::ContentRejected, "{text:?}");
        }
        assert_eq!(masked(&m, "good day"), "good day");
    }

    #[test]
    fn mask_replaces_the_original_characters() {
        let m = filter("bad\nworse words\n坏蛋\n", Action::Mask);
        assert_eq!(masked(&m, "a Ｂａｄ idea"), "a *** idea");
        assert_eq!(masked(&m, "b\u{200b}ad"), "****");
        assert_eq!(masked(&m, "WORSE WORDS here"), "*********** here");
        assert_eq!(masked(&m, "你是坏蛋吗"), "你是**吗");
        assert_eq!(masked(&m, "fine"), "fine");
    }

    #[test]
    fn reload_picks_up_a_changed_list_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.txt");
        std::fs::write(&path, "bad\n").unwrap();
        let m = Moderation::default();
        let cfg = ModerationConfig {
            words_file: Some(path.clone()),
            action: Action::Mask,
        };
        assert_eq!(m.load(&cfg).unwrap(), 1);
        std::fs::write(&path, "bad\nugly\n").unwrap();
        assert_eq!(m.reload().unwrap(), 2);
        assert_eq!(masked(&m, "ugly"), "****");
        std::fs::remove_file(&path).unwrap();
        assert!(m.reload().is_err());
        assert_eq!(masked(&m, "ugly"), "****");
    }
}
