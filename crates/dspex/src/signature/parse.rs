//! Recursive-descent parsers for type strings and DSPy signature strings.
//!
//! ```text
//! signature := [fields] "->" fields
//! fields    := field ("," field)*
//! field     := name [":" declared]              (no type means str)
//! declared  := kind | "optional" "[" kind "]" | type
//! kind      := "embedding" | "probability" | "confidence_score" | "confidence" | "reasoning_chain"
//! type      := "str" | "int" | "float" | "bool"
//!            | "list" "[" type "]" | "optional" "[" type "]"
//!            | "dict" "[" "str" "," type "]"
//!            | "literal" "[" member (("|" | ",") member)* "]"
//! member    := bare | "'" ... "'" | '"' ... '"'  (backslash escapes the next character)
//! ```
//!
//! Whitespace between tokens is free and names are ASCII case-insensitive,
//! as in the Python worker's parser. Nothing is evaluated.

use super::error::{ParseError, ParseErrorKind};
use super::types::{FieldKind, FieldType, LiteralMembers, MAX_TYPE_DEPTH, MAX_TYPE_LENGTH};

/// A field as written in a signature string.
#[derive(Debug)]
pub(super) struct ParsedField {
    pub(super) name: String,
    pub(super) ty: FieldType,
    pub(super) kind: FieldKind,
}

/// Parses a whole type string (no kinds).
pub(super) fn parse_type(text: &str) -> Result<FieldType, ParseError> {
    let mut p = Parser::new(text)?;
    let ty = p.ty(0)?;
    p.end("end of input")?;
    Ok(ty)
}

/// Parses a field's declared type: a type, a kind, or `optional[kind]`.
pub(super) fn parse_declared(text: &str) -> Result<(FieldType, FieldKind), ParseError> {
    let mut p = Parser::new(text)?;
    let declared = p.declared()?;
    p.end("end of input")?;
    Ok(declared)
}

/// Parses `inputs -> outputs`.
pub(super) fn parse_signature(
    text: &str,
) -> Result<(Vec<ParsedField>, Vec<ParsedField>), ParseError> {
    let mut p = Parser {
        text,
        pos: 0,
        field: None,
    };
    let mut inputs = Vec::new();
    if !p.at_arrow() {
        loop {
            inputs.push(p.field()?);
            match p.peek() {
                Some(',') => p.pos += 1,
                _ if p.at_arrow() => break,
                found => {
                    return Err(p.error(ParseErrorKind::Expected {
                        expected: "`,` or `->`",
                        found,
                    }));
                }
            }
        }
    }
    p.pos += 2; // "->", checked by at_arrow
    let mut outputs = Vec::new();
    loop {
        outputs.push(p.field()?);
        match p.peek() {
            Some(',') => p.pos += 1,
            None => break,
            found => {
                return Err(p.error(ParseErrorKind::Expected {
                    expected: "`,` or end of input",
                    found,
                }));
            }
        }
    }
    Ok((inputs, outputs))
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset; errors report characters.
    pos: usize,
    /// The field whose type is being read, for error messages.
    field: Option<String>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Self, ParseError> {
        let p = Self {
            text,
            pos: 0,
            field: None,
        };
        if let Some((at, _)) = text.char_indices().nth(MAX_TYPE_LENGTH) {
            return Err(p.error_at(at, ParseErrorKind::TooLong));
        }
        Ok(p)
    }

    fn error(&self, reason: ParseErrorKind) -> ParseError {
        self.error_at(self.pos, reason)
    }

    fn error_at(&self, byte: usize, reason: ParseErrorKind) -> ParseError {
        ParseError {
            input: self.text.to_owned(),
            position: self.text[..byte].chars().count(),
            field: self.field.clone(),
            reason,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// The next non-blank character, not consumed.
    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    fn at_arrow(&mut self) -> bool {
        self.skip_ws();
        self.rest().starts_with("->")
    }

    fn expect(&mut self, c: char, expected: &'static str) -> Result<(), ParseError> {
        match self.peek() {
            Some(found) if found == c => {
                self.pos += c.len_utf8();
                Ok(())
            }
            found => Err(self.error(ParseErrorKind::Expected { expected, found })),
        }
    }

    fn end(&mut self, expected: &'static str) -> Result<(), ParseError> {
        match self.peek() {
            None => Ok(()),
            found => Err(self.error(ParseErrorKind::Expected { expected, found })),
        }
    }

    /// A run of letters, digits and `_` (start offset and text), or an error.
    fn word(&mut self, expected: &'static str) -> Result<(usize, &'a str), ParseError> {
        self.skip_ws();
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            let found = self.rest().chars().next();
            return Err(self.error(ParseErrorKind::Expected { expected, found }));
        }
        self.pos += len;
        Ok((start, &self.text[start..self.pos]))
    }

    fn field(&mut self) -> Result<ParsedField, ParseError> {
        let (_, name) = self.word("a field name")?;
        if self.peek() != Some(':') {
            return Ok(ParsedField {
                name: name.to_owned(),
                ty: FieldType::Str,
                kind: FieldKind::Plain,
            });
        }
        self.pos += 1;
        self.field = Some(name.to_owned());
        let (ty, kind) = self.declared()?;
        self.field = None;
        Ok(ParsedField {
            name: name.to_owned(),
            ty,
            kind,
        })
    }

    fn declared(&mut self) -> Result<(FieldType, FieldKind), ParseError> {
        let before = self.pos;
        let (_, word) = self.word("a type name")?;
        if let Some(kind) = self.kind_word(word)? {
            return Ok((kind_type(kind), kind));
        }
        if word.eq_ignore_ascii_case("optional") {
            self.expect('[', "`[`")?;
            let inner_start = self.pos;
            let (_, inner) = self.word("a type name")?;
            if let Some(kind) = self.kind_word(inner)? {
                self.expect(']', "`]`")?;
                return Ok((FieldType::optional(kind_type(kind)), kind));
            }
            self.pos = inner_start;
            let item = self.ty(1)?;
            self.expect(']', "`]`")?;
            return Ok((FieldType::optional(item), FieldKind::Plain));
        }
        self.pos = before;
        Ok((self.ty(0)?, FieldKind::Plain))
    }

    /// The kind `word` names, checking it is not given parameters.
    fn kind_word(&mut self, word: &str) -> Result<Option<FieldKind>, ParseError> {
        let Some(kind) = FieldKind::from_name(word) else {
            return Ok(None);
        };
        if self.peek() == Some('[') {
            return Err(self.error(ParseErrorKind::TakesNoParameters(word.to_owned())));
        }
        Ok(Some(kind))
    }

    fn ty(&mut self, depth: usize) -> Result<FieldType, ParseError> {
        self.skip_ws();
        if depth > MAX_TYPE_DEPTH {
            return Err(self.error(ParseErrorKind::TooDeep));
        }
        let (start, word) = self.word("a type name")?;
        let scalar = match word.to_ascii_lowercase().as_str() {
            "str" => Some(FieldType::Str),
            "int" => Some(FieldType::Int),
            "float" => Some(FieldType::Float),
            "bool" => Some(FieldType::Bool),
            "history" => Some(FieldType::History),
            "list" => {
                let item = self.bracketed(depth)?;
                return Ok(FieldType::list(item));
            }
            "optional" => {
                let inner = self.bracketed(depth)?;
                return Ok(FieldType::optional(inner));
            }
            "dict" => return self.dict(depth),
            "literal" => return self.literal(),
            _ => None,
        };
        if let Some(scalar) = scalar {
            if self.peek() == Some('[') {
                return Err(self.error(ParseErrorKind::TakesNoParameters(word.to_owned())));
            }
            return Ok(scalar);
        }
        let reason = match FieldKind::from_name(word) {
            Some(kind) => ParseErrorKind::KindNotAllowedHere(kind),
            None => ParseErrorKind::UnknownType(word.to_owned()),
        };
        Err(self.error_at(start, reason))
    }

    /// `[` type `]`, the type one level deeper.
    fn bracketed(&mut self, depth: usize) -> Result<FieldType, ParseError> {
        self.expect('[', "`[`")?;
        let ty = self.ty(depth + 1)?;
        self.expect(']', "`]`")?;
        Ok(ty)
    }

    fn dict(&mut self, depth: usize) -> Result<FieldType, ParseError> {
        self.expect('[', "`[`")?;
        self.skip_ws();
        let key_start = self.pos;
        let key = self.ty(depth + 1)?;
        if key != FieldType::Str {
            return Err(self.error_at(key_start, ParseErrorKind::DictKeyNotStr(key.to_wire())));
        }
        self.expect(',', "`,`")?;
        let value = self.ty(depth + 1)?;
        self.expect(']', "`]`")?;
        Ok(FieldType::dict(value))
    }

    fn literal(&mut self) -> Result<FieldType, ParseError> {
        self.expect('[', "`[`")?;
        let mut members: Vec<String> = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let member = self.member()?;
            if members.contains(&member) {
                return Err(self.error_at(start, ParseErrorKind::DuplicateLiteralMember(member)));
            }
            members.push(member);
            match self.peek() {
                Some('|' | ',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                found => {
                    return Err(self.error(ParseErrorKind::Expected {
                        expected: "`|` or `]`",
                        found,
                    }));
                }
            }
        }
        let members = LiteralMembers::new(members).expect("checked: non-empty and distinct");
        Ok(FieldType::Literal(members))
    }

    fn member(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let mut chars = self.rest().char_indices();
        match chars.next() {
            Some((_, quote @ ('"' | '\''))) => {
                let mut out = String::new();
                let mut escaped = false;
                for (i, c) in chars {
                    if escaped {
                        out.push(c);
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == quote {
                        self.pos += i + 1;
                        return Ok(out);
                    } else {
                        out.push(c);
                    }
                }
                Err(self.error(ParseErrorKind::UnterminatedQuote))
            }
            _ => {
                let rest = self.rest();
                let len = rest
                    .find(|c: char| c.is_whitespace() || "|[]'\",".contains(c))
                    .unwrap_or(rest.len());
                if len == 0 {
                    let found = rest.chars().next();
                    return Err(self.error(ParseErrorKind::Expected {
                        expected: "a literal member",
                        found,
                    }));
                }
                self.pos += len;
                Ok(rest[..len].to_owned())
            }
        }
    }
}

fn kind_type(kind: FieldKind) -> FieldType {
    kind.wire_type().expect("named kinds have a wire type")
}
