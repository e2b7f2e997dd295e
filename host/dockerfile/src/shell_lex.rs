//! Variable substitution in Dockerfile arguments, with Docker's rules: `$VAR`,
//! `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`,
//! `${VAR:?msg}`, single quotes literal, double quotes expanding, the escape char
//! (`\` or the `# escape=` one) quoting the next character.

use crate::{Error, Result};

pub struct Lexer<'a> {
    pub escape: char,
    /// `KEY=value` entries; the first match wins.
    pub env: &'a [String],
}

fn lookup<'e>(env: &'e [String], name: &str) -> Option<&'e str> {
    env.iter().find_map(|e| {
        e.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

struct Scanner {
    chars: Vec<char>,
    pos: usize,
}

impl Scanner {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }
}

impl Lexer<'_> {
    /// One word: quotes removed, variables expanded.
    pub fn word(&self, s: &str) -> Result<String> {
        Ok(self.process(s, false)?.join(""))
    }

    /// Whitespace-separated words (outside quotes), each expanded.
    pub fn words(&self, s: &str) -> Result<Vec<String>> {
        self.process(s, true)
    }

    fn process(&self, s: &str, split: bool) -> Result<Vec<String>> {
        let mut sc = Scanner {
            chars: s.chars().collect(),
            pos: 0,
        };
        let mut words = Vec::new();
        let mut cur = String::new();
        // A word that is only `""` still counts as a word.
        let mut in_word = false;
        while let Some(c) = sc.next() {
            match c {
                c if c == self.escape => {
                    match sc.next() {
                        Some(n) => cur.push(n),
                        // A trailing escape stays (dockerd keeps it).
                        None => cur.push(c),
                    }
                    in_word = true;
                }
                '\'' => {
                    in_word = true;
                    loop {
                        match sc.next() {
                            Some('\'') => break,
                            Some(x) => cur.push(x),
                            None => return Err(Error::invalid("unexpected end of statement while looking for matching single-quote")),
                        }
                    }
                }
                '"' => {
                    in_word = true;
                    loop {
                        match sc.next() {
                            Some('"') => break,
                            Some('$') => cur.push_str(&self.variable(&mut sc)?),
                            Some(x) if x == self.escape => match sc.peek() {
                                Some(n) if n == '"' || n == '$' || n == self.escape => {
                                    sc.next();
                                    cur.push(n);
                                }
                                _ => cur.push(x),
                            },
                            Some(x) => cur.push(x),
                            None => return Err(Error::invalid("unexpected end of statement while looking for matching double-quote")),
                        }
                    }
                }
                '$' => {
                    let v = self.variable(&mut sc)?;
                    if split {
                        // Unquoted expansions split into words, as the shell does.
                        let mut parts = v.split(char::is_whitespace).peekable();
                        while let Some(p) = parts.next() {
                            cur.push_str(p);
                            if !p.is_empty() {
                                in_word = true;
                            }
                            if parts.peek().is_some() && in_word {
                                words.push(std::mem::take(&mut cur));
                                in_word = false;
                            }
                        }
                    } else {
                        cur.push_str(&v);
                        in_word |= !v.is_empty();
                    }
                }
                c if split && c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if in_word || !split {
            words.push(cur);
        }
        Ok(words)
    }

    /// After a `$`: the variable's value (or `$` itself when no name follows).
    fn variable(&self, sc: &mut Scanner) -> Result<String> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match sc.peek() {
            Some('{') => {
                sc.next();
                let mut name = String::new();
                while let Some(c) = sc.peek() {
                    if !is_name(c) {
                        break;
                    }
                    name.push(c);
                    sc.next();
                }
                if name.is_empty() {
                    return Err(Error::invalid("bad substitution: missing variable name"));
                }
                let value = lookup(self.env, &name);
                match sc.next() {
                    Some('}') => Ok(value.unwrap_or("").to_string()),
                    Some(op @ (':' | '-' | '+' | '?')) => {
                        let colon = op == ':';
                        let op = if colon {
                            sc.next()
                                .ok_or_else(|| Error::invalid("bad substitution"))?
                        } else {
                            op
                        };
                        let word = self.modifier_word(sc)?;
                        let set = match value {
                            Some(v) => !colon || !v.is_empty(),
                            None => false,
                        };
                        match op {
                            '-' => Ok(if set {
                                value.unwrap_or("").to_string()
                            } else {
                                word
                            }),
                            '+' => Ok(if set { word } else { String::new() }),
                            '?' => {
                                if set {
                                    Ok(value.unwrap_or("").to_string())
                                } else {
                                    let msg = if word.is_empty() {
                                        "is not allowed to be unset".to_string()
                                    } else {
                                        word
                                    };
                                    Err(Error::invalid(format!("{name}: {msg}")))
                                }
                            }
                            other => Err(Error::invalid(format!(
                                "unsupported modifier ({other}) in substitution"
                            ))),
                        }
                    }
                    _ => Err(Error::invalid(format!(
                        "missing ':' or '}}' in substitution of {name}"
                    ))),
                }
            }
            Some(c) if is_name(c) => {
                let mut name = String::new();
                while let Some(c) = sc.peek() {
                    if !is_name(c) {
                        break;
                    }
                    name.push(c);
                    sc.next();
                }
                Ok(lookup(self.env, &name).unwrap_or("").to_string())
            }
            _ => Ok("$".to_string()),
        }
    }

    /// The word of `${VAR:-word}` up to the matching `}` (itself expanded).
    fn modifier_word(&self, sc: &mut Scanner) -> Result<String> {
        let mut raw = String::new();
        let mut depth = 0;
        loop {
            match sc.next() {
                None => return Err(Error::invalid("syntax error: missing '}'")),
                Some('}') if depth == 0 => break,
                Some(c) => {
                    if c == '{' {
                        depth += 1;
                    } else if c == '}' {
                        depth -= 1;
                    }
                    raw.push(c);
                }
            }
        }
        self.word(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<String> {
        vec![
            "A=1".into(),
            "E=".into(),
            "SP=x y".into(),
            "PATH=/bin".into(),
        ]
    }

    #[test]
    fn expansion_rules_from_the_reference() {
        let env = env();
        let l = Lexer {
            escape: '\\',
            env: &env,
        };
        assert_eq!(l.word("$A").unwrap(), "1");
        assert_eq!(l.word("${A}b").unwrap(), "1b");
        assert_eq!(l.word("${NOPE:-dflt}").unwrap(), "dflt");
        assert_eq!(l.word("${E:-dflt}").unwrap(), "dflt");
        assert_eq!(l.word("${E-dflt}").unwrap(), "");
        assert_eq!(l.word("${A:+alt}").unwrap(), "alt");
        assert_eq!(l.word("${NOPE:+alt}").unwrap(), "");
        assert_eq!(l.word("${NOPE:-$A}").unwrap(), "1");
        assert!(l
            .word("${NOPE:?must be set}")
            .unwrap_err()
            .to_string()
            .contains("must be set"));
        assert_eq!(l.word("'$A'").unwrap(), "$A");
        assert_eq!(l.word("\"$A x\"").unwrap(), "1 x");
        assert_eq!(l.word("\\$A").unwrap(), "$A");
        assert_eq!(l.word("\"\\$A\\\"\"").unwrap(), "$A\"");
        assert_eq!(l.word("a\\ b").unwrap(), "a b");
        assert_eq!(l.word("$").unwrap(), "$");
        assert_eq!(l.word("$/x").unwrap(), "$/x");
        assert_eq!(l.word("${PATH}:/usr/bin").unwrap(), "/bin:/usr/bin");
        assert!(l.word("${A").is_err());
        assert!(l.word("'open").is_err());
    }

    #[test]
    fn words_split_outside_quotes() {
        let env = env();
        let l = Lexer {
            escape: '\\',
            env: &env,
        };
        assert_eq!(l.words("80/tcp  $A").unwrap(), vec!["80/tcp", "1"]);
        assert_eq!(l.words("\"a b\" c").unwrap(), vec!["a b", "c"]);
        assert_eq!(l.words("$SP z").unwrap(), vec!["x", "y", "z"]);
        assert_eq!(l.words("\"$SP\"").unwrap(), vec!["x y"]);
        assert_eq!(l.words("\"\"").unwrap(), vec![""]);
    }

    #[test]
    fn backtick_escape() {
        let env = env();
        let l = Lexer {
            escape: '`',
            env: &env,
        };
        assert_eq!(l.word("c:\\dir `$A").unwrap(), "c:\\dir $A");
    }
}
