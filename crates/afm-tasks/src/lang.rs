//! The tool: a small, safe, pure expression language and its bounded
//! interpreter.
//!
//! Programs are single expressions (see the crate README for the full
//! reference):
//!
//! ```text
//! sum(map(x => x * x, [3, 1, 4]))          -> 26
//! let xs = [5, 2, 8] in max(xs) - min(xs)   -> 6
//! upper(reversed("apple"))                  -> ELPPA
//! ```
//!
//! Safety: there is no I/O and no mutation. Every evaluation step and every
//! element a builtin touches or allocates costs fuel ([`Limits::fuel`]);
//! every value is weighed (list elements plus string bytes, nested lists
//! included) and none may exceed [`Limits::max_weight`] *before* it is
//! allocated; parser and evaluator nesting is bounded by
//! [`Limits::max_depth`], so hostile input (`range(10**12)`, `"a" * 10**9`,
//! 10 000 nested parentheses, self-application `(f => f(f))(f => f(f))`)
//! ends in a [`ToolError`], never a stack overflow or out-of-memory.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Resource bounds of one program run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Evaluation steps (AST nodes evaluated plus elements processed).
    pub fuel: u64,
    /// Largest value weight (list elements + string bytes, recursively).
    pub max_weight: usize,
    /// Deepest nesting of the parser and of the evaluator (calls included);
    /// values above [`MAX_DEPTH_CAP`] act as the cap (native stack safety).
    pub max_depth: usize,
    /// Longest accepted source text, in bytes.
    pub max_source: usize,
    /// Longest observation text; longer output is cut with `...`.
    pub max_output: usize,
    /// Wall-clock deadline of one run in milliseconds (0 = none): the
    /// backstop behind fuel, should some operation ever escape it.
    pub max_millis: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 100_000,
            max_weight: 10_000,
            max_depth: 64,
            max_source: 4_096,
            max_output: 400,
            max_millis: 2_000,
        }
    }
}

/// Hard cap on [`Limits::max_depth`]: keeps the recursive parser and
/// evaluator far from the end of a 2 MiB thread stack even in debug builds
/// (a debug evaluator level takes about 8 KiB of stack).
pub const MAX_DEPTH_CAP: usize = 128;

impl Limits {
    /// The nesting limit actually enforced: `min(max_depth, MAX_DEPTH_CAP)`.
    pub fn depth(&self) -> usize {
        self.max_depth.min(MAX_DEPTH_CAP)
    }
}

/// Why a program produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The source does not parse; `column` is 1-based, in characters.
    #[error("parse error at column {column}: {message}")]
    Parse { column: usize, message: String },
    /// A well-formed program failed (type error, unknown name, division by zero...).
    #[error("{0}")]
    Runtime(String),
    /// The program ran out of evaluation steps.
    #[error("step limit exceeded ({limit} steps)")]
    OutOfFuel { limit: u64 },
    /// Parser or evaluator nesting exceeded the limit.
    #[error("nesting too deep (limit {limit})")]
    TooDeep { limit: usize },
    /// A value would exceed the size limit.
    #[error("value too large ({size} > limit {limit})")]
    TooLarge { size: u128, limit: usize },
    /// The source text is longer than allowed.
    #[error("program too long ({len} bytes > limit {limit})")]
    SourceTooLong { len: usize, limit: usize },
    /// The run passed its wall-clock deadline ([`Limits::max_millis`]).
    #[error("time limit exceeded ({millis} ms)")]
    Timeout { millis: u64 },
}

fn rt<T>(msg: impl Into<String>) -> Result<T, ToolError> {
    Err(ToolError::Runtime(msg.into()))
}

/// `name` takes exactly `n` arguments.
fn check_arity(name: &str, args: &[Value], n: usize) -> Result<(), ToolError> {
    if args.len() == n {
        Ok(())
    } else {
        rt(format!("{name} takes {n} argument(s), got {}", args.len()))
    }
}

/// `v` as a list of ints, for builtin `name`.
fn int_list_of(name: &str, v: &Value) -> Result<Vec<i64>, ToolError> {
    let Some(xs) = v.as_list() else {
        return rt(format!("{name} needs a list, got {}", v.type_name()));
    };
    xs.iter()
        .map(|x| match x {
            Value::Int(i) => Ok(*i),
            o => rt(format!(
                "{name} needs a list of int, found {}",
                o.type_name()
            )),
        })
        .collect()
}

// ---------------------------------------------------------------- values

/// A list with its cached weight.
#[derive(Debug)]
pub struct ListVal {
    items: Vec<Value>,
    weight: usize,
}

/// A user function `param => body` with its captured environment.
#[derive(Debug)]
pub struct Lambda {
    param: Rc<str>,
    body: Rc<Expr>,
    env: Env,
}

/// A runtime value. Cheap to clone (lists, strings and lambdas are shared).
#[derive(Debug, Clone)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Str(Rc<str>),
    List(Rc<ListVal>),
    Builtin(&'static str),
    Lambda(Rc<Lambda>),
}

impl Value {
    /// Weight: 1 for scalars, 1 + bytes for strings, 1 + sum of elements for lists.
    pub fn weight(&self) -> usize {
        match self {
            Value::Str(s) => 1 + s.len(),
            Value::List(l) => l.weight,
            _ => 1,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Builtin(_) | Value::Lambda(_) => "function",
        }
    }

    /// The elements when this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(&l.items),
            _ => None,
        }
    }

    /// Canonical text: ints in decimal, `true`/`false`, lists as
    /// `[1, 2, 3]`, strings quoted (`"ab"`) inside lists, and the top-level
    /// string unquoted. This is the observation and the answer format.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        match self {
            Value::Str(x) => s.push_str(x),
            v => write_value(&mut s, v, usize::MAX),
        }
        s
    }

    /// Build a list value (the caller guarantees the weight is in bounds).
    pub fn list(items: Vec<Value>) -> Value {
        let weight = 1 + items.iter().map(Value::weight).sum::<usize>();
        Value::List(Rc::new(ListVal { items, weight }))
    }

    /// Build a string value.
    pub fn str(s: &str) -> Value {
        Value::Str(Rc::from(s))
    }
}

/// Write `v` quoting strings; stops (approximately) once `out` exceeds `cap` bytes.
fn write_value(out: &mut String, v: &Value, cap: usize) {
    if out.len() > cap {
        return;
    }
    match v {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Str(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
                if out.len() > cap {
                    return;
                }
            }
            out.push('"');
        }
        Value::List(l) => {
            out.push('[');
            for (i, x) in l.items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, x, cap);
                if out.len() > cap {
                    return;
                }
            }
            out.push(']');
        }
        Value::Builtin(n) => {
            let _ = write!(out, "<function {n}>");
        }
        Value::Lambda(l) => {
            let _ = write!(out, "<function {} => ...>", l.param);
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Structural equality of plain data (functions never compare equal).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::List(a), Value::List(b)) => a.items == b.items,
            _ => false,
        }
    }
}

/// The observation text of a run: the canonical value (cut at
/// `limits.max_output` bytes with `...`), or `error: <message>`.
pub fn observation_text(result: &Result<Value, ToolError>, limits: &Limits) -> String {
    match result {
        Ok(Value::Str(s)) => cut(s.to_string(), limits.max_output),
        Ok(v) => {
            let mut s = String::new();
            write_value(&mut s, v, limits.max_output);
            cut(s, limits.max_output)
        }
        Err(e) => format!("error: {e}"),
    }
}

fn cut(mut s: String, cap: usize) -> String {
    if s.len() > cap {
        let mut end = cap;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Parse and run `src` within `limits`.
pub fn run_program(src: &str, limits: &Limits) -> Result<Value, ToolError> {
    let expr = parse(src, limits)?;
    let mut m = Machine {
        fuel: limits.fuel,
        depth: 0,
        limits: *limits,
        deadline: (limits.max_millis > 0)
            .then(|| Instant::now() + Duration::from_millis(limits.max_millis)),
        burns: 0,
    };
    m.eval(&expr, &None)
}

/// Parse, run and render in one call (what the agent runtime executes for
/// the last Coder turn).
pub fn run_to_observation(src: &str, limits: &Limits) -> String {
    observation_text(&run_program(src, limits), limits)
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Str(String),
    Ident(String),
    Sym(&'static str),
    Eof,
}

/// A lexed token with its 1-based character column.
#[derive(Debug, Clone)]
struct Lexeme {
    tok: Tok,
    col: usize,
}

const SYMBOLS: [&str; 19] = [
    "**", "//", "==", "!=", "<=", ">=", "=>", "(", ")", "[", "]", ",", "+", "-", "*", "%", "<",
    ">", "=",
];

fn lex(src: &str) -> Result<Vec<Lexeme>, ToolError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let perr = |col: usize, m: String| ToolError::Parse {
        column: col,
        message: m,
    };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse::<i64>()
                .map_err(|_| perr(col, format!("integer {text} is too large")))?;
            out.push(Lexeme {
                tok: Tok::Int(n),
                col,
            });
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Lexeme {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                col,
            });
            continue;
        }
        if c == '"' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(perr(col, "unterminated string".into())),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let e = match chars.get(i + 1) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some('"') => '"',
                            Some('\\') => '\\',
                            _ => return Err(perr(i + 1, "bad escape in string".into())),
                        };
                        s.push(e);
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Lexeme {
                tok: Tok::Str(s),
                col,
            });
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(s) => {
                i += s.chars().count();
                out.push(Lexeme {
                    tok: Tok::Sym(s),
                    col,
                });
            }
            None => return Err(perr(col, format!("unexpected character {c:?}"))),
        }
    }
    out.push(Lexeme {
        tok: Tok::Eof,
        col: chars.len() + 1,
    });
    Ok(out)
}

// ---------------------------------------------------------------- parser

/// A parsed program.
#[derive(Debug)]
pub enum Expr {
    Int(i64),
    Bool(bool),
    Str(Rc<str>),
    Var(Rc<str>),
    List(Vec<Expr>),
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Call(Box<Expr>, Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
    Let(Rc<str>, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Lambda(Rc<str>, Rc<Expr>),
}

const KEYWORDS: [&str; 10] = [
    "let", "in", "if", "then", "else", "and", "or", "not", "true", "false",
];

/// Parse `src` into an [`Expr`], checking the source length and nesting depth.
pub fn parse(src: &str, limits: &Limits) -> Result<Expr, ToolError> {
    if src.len() > limits.max_source {
        return Err(ToolError::SourceTooLong {
            len: src.len(),
            limit: limits.max_source,
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        max_depth: limits.depth(),
    };
    let e = p.expr()?;
    if p.peek() != &Tok::Eof {
        return Err(p.err("unexpected text after the end of the expression"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Lexeme>,
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].tok
    }
    fn peek2(&self) -> &Tok {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)].tok
    }
    fn col(&self) -> usize {
        self.toks[self.pos.min(self.toks.len() - 1)].col
    }
    fn err(&self, m: &str) -> ToolError {
        let found = match self.peek() {
            Tok::Eof => "end of input".to_string(),
            Tok::Int(i) => format!("{i}"),
            Tok::Str(s) => format!("{s:?}"),
            Tok::Ident(s) => s.clone(),
            Tok::Sym(s) => format!("'{s}'"),
        };
        ToolError::Parse {
            column: self.col(),
            message: format!("{m} (found {found})"),
        }
    }
    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn is_kw(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == s)
    }
    fn expect_sym(&mut self, s: &str) -> Result<(), ToolError> {
        if self.is_sym(s) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(&format!("expected '{s}'")))
        }
    }
    fn expect_kw(&mut self, s: &str) -> Result<(), ToolError> {
        if self.is_kw(s) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(&format!("expected '{s}'")))
        }
    }
    fn name(&mut self) -> Result<Rc<str>, ToolError> {
        match self.peek().clone() {
            Tok::Ident(s) if !KEYWORDS.contains(&s.as_str()) => {
                self.bump();
                Ok(Rc::from(s.as_str()))
            }
            _ => Err(self.err("expected a name")),
        }
    }
    fn enter(&mut self) -> Result<(), ToolError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(ToolError::Parse {
                column: self.col(),
                message: format!("nesting too deep (limit {})", self.max_depth),
            });
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ToolError> {
        self.enter()?;
        let r = self.expr_inner();
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self) -> Result<Expr, ToolError> {
        if self.is_kw("let") {
            self.bump();
            let n = self.name()?;
            self.expect_sym("=")?;
            let v = self.expr()?;
            self.expect_kw("in")?;
            let b = self.expr()?;
            return Ok(Expr::Let(n, Box::new(v), Box::new(b)));
        }
        if self.is_kw("if") {
            self.bump();
            let c = self.expr()?;
            self.expect_kw("then")?;
            let a = self.expr()?;
            self.expect_kw("else")?;
            let b = self.expr()?;
            return Ok(Expr::If(Box::new(c), Box::new(a), Box::new(b)));
        }
        if matches!(self.peek(), Tok::Ident(_)) && matches!(self.peek2(), Tok::Sym("=>")) {
            let n = self.name()?;
            self.bump();
            let b = self.expr()?;
            return Ok(Expr::Lambda(n, Rc::new(b)));
        }
        self.or()
    }

    fn or(&mut self) -> Result<Expr, ToolError> {
        let mut l = self.and()?;
        while self.is_kw("or") {
            self.bump();
            let r = self.and()?;
            l = Expr::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ToolError> {
        let mut l = self.not()?;
        while self.is_kw("and") {
            self.bump();
            let r = self.not()?;
            l = Expr::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, ToolError> {
        if self.is_kw("not") {
            self.bump();
            self.enter()?;
            let e = self.not();
            self.depth -= 1;
            return Ok(Expr::Unary("not", Box::new(e?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, ToolError> {
        const CMP: [&str; 6] = ["==", "!=", "<=", ">=", "<", ">"];
        let l = self.add()?;
        let Some(op) = CMP.iter().copied().find(|o| self.is_sym(o)) else {
            return Ok(l);
        };
        self.bump();
        let r = self.add()?;
        if CMP.iter().any(|o| self.is_sym(o)) {
            return Err(self.err("comparisons cannot be chained"));
        }
        Ok(Expr::Binary(op, Box::new(l), Box::new(r)))
    }

    fn add(&mut self) -> Result<Expr, ToolError> {
        let mut l = self.mul()?;
        loop {
            let op = if self.is_sym("+") {
                "+"
            } else if self.is_sym("-") {
                "-"
            } else {
                return Ok(l);
            };
            self.bump();
            let r = self.mul()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn mul(&mut self) -> Result<Expr, ToolError> {
        let mut l = self.unary()?;
        loop {
            let op = if self.is_sym("*") {
                "*"
            } else if self.is_sym("//") {
                "//"
            } else if self.is_sym("%") {
                "%"
            } else {
                return Ok(l);
            };
            self.bump();
            let r = self.unary()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, ToolError> {
        if self.is_sym("-") {
            self.bump();
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            return Ok(Expr::Unary("-", Box::new(e?)));
        }
        self.pow()
    }

    fn pow(&mut self) -> Result<Expr, ToolError> {
        let base = self.postfix()?;
        if self.is_sym("**") {
            self.bump();
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            return Ok(Expr::Binary("**", Box::new(base), Box::new(e?)));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Expr, ToolError> {
        let mut e = self.primary()?;
        loop {
            if self.is_sym("(") {
                self.bump();
                let mut args = Vec::new();
                if !self.is_sym(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.is_sym(",") {
                            self.bump();
                        } else {
                            break;
                        }
                    }
                }
                self.expect_sym(")")?;
                e = Expr::Call(Box::new(e), args);
            } else if self.is_sym("[") {
                self.bump();
                let i = self.expr()?;
                self.expect_sym("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ToolError> {
        match self.peek().clone() {
            Tok::Int(i) => {
                self.bump();
                Ok(Expr::Int(i))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Str(Rc::from(s.as_str())))
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.bump();
                Ok(Expr::Bool(s == "true"))
            }
            Tok::Ident(_) => Ok(Expr::Var(self.name()?)),
            Tok::Sym("(") => {
                self.bump();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("[") => {
                self.bump();
                let mut items = Vec::new();
                if !self.is_sym("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.is_sym(",") {
                            self.bump();
                            if self.is_sym("]") {
                                break;
                            }
                        } else {
                            break;
                        }
                    }
                }
                self.expect_sym("]")?;
                Ok(Expr::List(items))
            }
            _ => Err(self.err("expected a value")),
        }
    }
}

// ---------------------------------------------------------------- evaluator

/// Persistent environment: a linked list of bindings.
type Env = Option<Rc<Binding>>;

#[derive(Debug)]
pub struct Binding {
    name: Rc<str>,
    value: Value,
    next: Env,
}

/// Names of the builtin functions.
pub const BUILTINS: [&str; 21] = [
    "sum", "len", "max", "min", "sorted", "reversed", "upper", "lower", "range", "map", "filter",
    "count", "abs", "gcd", "lcm", "even", "odd", "str", "int", "join", "split",
];

struct Machine {
    fuel: u64,
    depth: usize,
    limits: Limits,
    deadline: Option<Instant>,
    /// Calls of `burn` so far (the clock is read every 1024th).
    burns: u64,
}

impl Machine {
    /// Charge `n` units of fuel (every evaluation step, element touched,
    /// byte allocated or loop iteration), and check the deadline now and then.
    fn burn(&mut self, n: usize) -> Result<(), ToolError> {
        self.burn_u128(n as u128)
    }

    fn burn_u128(&mut self, n: u128) -> Result<(), ToolError> {
        self.burns += 1;
        if self.burns.is_multiple_of(1024) {
            if let Some(d) = self.deadline {
                if Instant::now() > d {
                    return Err(ToolError::Timeout {
                        millis: self.limits.max_millis,
                    });
                }
            }
        }
        if (self.fuel as u128) < n {
            self.fuel = 0;
            return Err(ToolError::OutOfFuel {
                limit: self.limits.fuel,
            });
        }
        self.fuel -= n as u64;
        Ok(())
    }

    /// Check a weight *before* allocating a value of that weight; charges it as fuel.
    fn alloc(&mut self, weight: u128) -> Result<(), ToolError> {
        if weight > self.limits.max_weight as u128 {
            return Err(ToolError::TooLarge {
                size: weight,
                limit: self.limits.max_weight,
            });
        }
        self.burn(weight as usize)
    }

    fn new_list(&mut self, items: Vec<Value>) -> Result<Value, ToolError> {
        let w = 1 + items.iter().map(|v| v.weight() as u128).sum::<u128>();
        self.alloc(w)?;
        Ok(Value::list(items))
    }

    fn new_str(&mut self, s: String) -> Result<Value, ToolError> {
        self.alloc(1 + s.len() as u128)?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn eval(&mut self, e: &Expr, env: &Env) -> Result<Value, ToolError> {
        self.depth += 1;
        if self.depth > self.limits.depth() {
            self.depth -= 1;
            return Err(ToolError::TooDeep {
                limit: self.limits.depth(),
            });
        }
        let r = self.burn(1).and_then(|_| self.eval_inner(e, env));
        self.depth -= 1;
        r
    }

    fn eval_inner(&mut self, e: &Expr, env: &Env) -> Result<Value, ToolError> {
        match e {
            Expr::Int(i) => Ok(Value::Int(*i)),
            Expr::Bool(b) => Ok(Value::Bool(*b)),
            Expr::Str(s) => Ok(Value::Str(s.clone())),
            Expr::Var(n) => lookup(env, n),
            Expr::List(items) => {
                let mut vs = Vec::with_capacity(items.len());
                for it in items {
                    vs.push(self.eval(it, env)?);
                }
                self.new_list(vs)
            }
            Expr::Unary(op, x) => {
                let v = self.eval(x, env)?;
                match (*op, v) {
                    ("-", Value::Int(i)) => i
                        .checked_neg()
                        .map(Value::Int)
                        .ok_or_else(|| ToolError::Runtime("integer overflow".into())),
                    ("not", Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (op, v) => rt(format!("cannot apply '{op}' to {}", v.type_name())),
                }
            }
            Expr::And(a, b) => match self.eval(a, env)? {
                Value::Bool(false) => Ok(Value::Bool(false)),
                Value::Bool(true) => self.bool_of(b, env, "and"),
                v => rt(format!("'and' needs bool, got {}", v.type_name())),
            },
            Expr::Or(a, b) => match self.eval(a, env)? {
                Value::Bool(true) => Ok(Value::Bool(true)),
                Value::Bool(false) => self.bool_of(b, env, "or"),
                v => rt(format!("'or' needs bool, got {}", v.type_name())),
            },
            Expr::Binary(op, a, b) => {
                let x = self.eval(a, env)?;
                let y = self.eval(b, env)?;
                self.binary(op, x, y)
            }
            Expr::Call(f, args) => {
                let fv = self.eval(f, env)?;
                let mut vs = Vec::with_capacity(args.len());
                for a in args {
                    vs.push(self.eval(a, env)?);
                }
                self.call(&fv, vs)
            }
            Expr::Index(x, i) => {
                let xv = self.eval(x, env)?;
                let iv = self.eval(i, env)?;
                let Value::Int(i) = iv else {
                    return rt(format!("index must be int, got {}", iv.type_name()));
                };
                match &xv {
                    Value::List(l) => index(l.items.len(), i).map(|k| l.items[k].clone()),
                    Value::Str(s) => {
                        let cs: Vec<char> = s.chars().collect();
                        self.burn(cs.len())?;
                        let k = index(cs.len(), i)?;
                        Ok(Value::str(&cs[k].to_string()))
                    }
                    v => rt(format!("cannot index {}", v.type_name())),
                }
            }
            Expr::Let(n, v, b) => {
                let value = self.eval(v, env)?;
                let env2 = Some(Rc::new(Binding {
                    name: n.clone(),
                    value,
                    next: env.clone(),
                }));
                self.eval(b, &env2)
            }
            Expr::If(c, a, b) => match self.eval(c, env)? {
                Value::Bool(true) => self.eval(a, env),
                Value::Bool(false) => self.eval(b, env),
                v => rt(format!("'if' needs bool, got {}", v.type_name())),
            },
            Expr::Lambda(p, body) => Ok(Value::Lambda(Rc::new(Lambda {
                param: p.clone(),
                body: body.clone(),
                env: env.clone(),
            }))),
        }
    }

    fn bool_of(&mut self, e: &Expr, env: &Env, op: &str) -> Result<Value, ToolError> {
        match self.eval(e, env)? {
            Value::Bool(b) => Ok(Value::Bool(b)),
            v => rt(format!("'{op}' needs bool, got {}", v.type_name())),
        }
    }

    fn compare(&mut self, a: &Value, b: &Value) -> Result<Ordering, ToolError> {
        self.burn(1)?;
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
            (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
            (Value::Str(x), Value::Str(y)) => {
                self.burn(x.len().min(y.len()))?;
                Ok(x.cmp(y))
            }
            (Value::List(x), Value::List(y)) => {
                for (p, q) in x.items.iter().zip(y.items.iter()) {
                    let o = self.compare(p, q)?;
                    if o != Ordering::Equal {
                        return Ok(o);
                    }
                }
                Ok(x.items.len().cmp(&y.items.len()))
            }
            _ => rt(format!(
                "cannot compare {} with {}",
                a.type_name(),
                b.type_name()
            )),
        }
    }

    /// Stable bottom-up merge sort; every comparison goes through
    /// [`Machine::compare`] (fuel-checked, errors on incomparable values).
    fn sort_values(&mut self, items: Vec<Value>) -> Result<Vec<Value>, ToolError> {
        let n = items.len();
        let mut src = items;
        let mut dst: Vec<Value> = Vec::with_capacity(n);
        let mut width = 1;
        while width < n {
            dst.clear();
            let mut lo = 0;
            while lo < n {
                let mid = (lo + width).min(n);
                let end = (lo + 2 * width).min(n);
                let (mut a, mut b) = (lo, mid);
                while a < mid && b < end {
                    if self.compare(&src[b], &src[a])? == Ordering::Less {
                        dst.push(src[b].clone());
                        b += 1;
                    } else {
                        dst.push(src[a].clone());
                        a += 1;
                    }
                }
                dst.extend_from_slice(&src[a..mid]);
                dst.extend_from_slice(&src[b..end]);
                lo = end;
            }
            std::mem::swap(&mut src, &mut dst);
            width *= 2;
        }
        Ok(src)
    }

    fn equal(&mut self, a: &Value, b: &Value) -> Result<bool, ToolError> {
        if matches!(a, Value::Builtin(_) | Value::Lambda(_))
            || matches!(b, Value::Builtin(_) | Value::Lambda(_))
        {
            return rt("cannot compare functions");
        }
        if std::mem::discriminant(a) != std::mem::discriminant(b) {
            return Ok(false);
        }
        self.burn(a.weight().min(b.weight()))?;
        Ok(a == b)
    }

    fn binary(&mut self, op: &str, x: Value, y: Value) -> Result<Value, ToolError> {
        let ovf = || ToolError::Runtime("integer overflow".into());
        match (op, &x, &y) {
            ("==", _, _) => Ok(Value::Bool(self.equal(&x, &y)?)),
            ("!=", _, _) => Ok(Value::Bool(!self.equal(&x, &y)?)),
            ("<", _, _) => Ok(Value::Bool(self.compare(&x, &y)? == Ordering::Less)),
            ("<=", _, _) => Ok(Value::Bool(self.compare(&x, &y)? != Ordering::Greater)),
            (">", _, _) => Ok(Value::Bool(self.compare(&x, &y)? == Ordering::Greater)),
            (">=", _, _) => Ok(Value::Bool(self.compare(&x, &y)? != Ordering::Less)),
            ("+", Value::Int(a), Value::Int(b)) => {
                a.checked_add(*b).map(Value::Int).ok_or_else(ovf)
            }
            ("-", Value::Int(a), Value::Int(b)) => {
                a.checked_sub(*b).map(Value::Int).ok_or_else(ovf)
            }
            ("*", Value::Int(a), Value::Int(b)) => {
                a.checked_mul(*b).map(Value::Int).ok_or_else(ovf)
            }
            ("//", Value::Int(_), Value::Int(0)) | ("%", Value::Int(_), Value::Int(0)) => {
                rt("division by zero")
            }
            ("//", Value::Int(a), Value::Int(b)) => {
                floor_div(*a, *b).map(Value::Int).ok_or_else(ovf)
            }
            ("%", Value::Int(a), Value::Int(b)) => {
                floor_mod(*a, *b).map(Value::Int).ok_or_else(ovf)
            }
            ("**", Value::Int(a), Value::Int(b)) => {
                if *b < 0 {
                    return rt("negative exponent");
                }
                let e = u32::try_from(*b).map_err(|_| ovf())?;
                a.checked_pow(e).map(Value::Int).ok_or_else(ovf)
            }
            ("+", Value::Str(a), Value::Str(b)) => {
                self.alloc(1 + a.len() as u128 + b.len() as u128)?;
                Ok(Value::Str(Rc::from(format!("{a}{b}"))))
            }
            ("+", Value::List(a), Value::List(b)) => {
                self.alloc(a.weight as u128 + b.weight as u128)?;
                let mut v = a.items.clone();
                v.extend(b.items.iter().cloned());
                Ok(Value::list(v))
            }
            ("*", Value::Str(_), Value::Int(_)) | ("*", Value::List(_), Value::Int(_)) => {
                self.repeat(&x, &y)
            }
            ("*", Value::Int(_), Value::Str(_)) | ("*", Value::Int(_), Value::List(_)) => {
                self.repeat(&y, &x)
            }
            _ => rt(format!(
                "cannot apply '{op}' to {} and {}",
                x.type_name(),
                y.type_name()
            )),
        }
    }

    fn repeat(&mut self, x: &Value, n: &Value) -> Result<Value, ToolError> {
        let Value::Int(n) = *n else {
            return rt("repeat count must be int");
        };
        let n = n.max(0) as u128;
        match x {
            Value::Str(s) => {
                self.alloc(1 + s.len() as u128 * n)?;
                Ok(Value::Str(Rc::from(s.repeat(n as usize))))
            }
            Value::List(l) => {
                self.alloc(1 + (l.weight as u128 - 1) * n)?;
                // One unit per copy, so repeating `[]` is not free.
                self.burn_u128(n)?;
                let mut v = Vec::with_capacity(l.items.len() * n as usize);
                for _ in 0..n {
                    v.extend(l.items.iter().cloned());
                }
                Ok(Value::list(v))
            }
            _ => rt("only str and list can be repeated"),
        }
    }

    fn call(&mut self, f: &Value, args: Vec<Value>) -> Result<Value, ToolError> {
        match f {
            Value::Lambda(l) => {
                if args.len() != 1 {
                    return rt(format!(
                        "function {} => ... takes 1 argument, got {}",
                        l.param,
                        args.len()
                    ));
                }
                let mut it = args.into_iter();
                let value = it.next().unwrap_or(Value::Int(0));
                let env = Some(Rc::new(Binding {
                    name: l.param.clone(),
                    value,
                    next: l.env.clone(),
                }));
                self.eval(&l.body, &env)
            }
            Value::Builtin(name) => self.builtin(name, args),
            v => rt(format!("{} is not a function", v.type_name())),
        }
    }

    fn builtin(&mut self, name: &str, args: Vec<Value>) -> Result<Value, ToolError> {
        match name {
            "sum" | "len" | "max" | "min" | "count" => self.aggregate_builtin(name, args),
            "sorted" | "reversed" | "range" | "map" | "filter" => self.sequence_builtin(name, args),
            "upper" | "lower" | "str" | "int" | "join" | "split" => self.text_builtin(name, args),
            "abs" | "gcd" | "lcm" | "even" | "odd" => self.number_builtin(name, args),
            other => rt(format!("unknown builtin {other}")),
        }
    }

    /// The builtins that reduce a list (`sum`, `len`, `max`, `min`, `count`).
    fn aggregate_builtin(&mut self, name: &str, args: Vec<Value>) -> Result<Value, ToolError> {
        let arity = |n: usize| check_arity(name, &args, n);
        let int_list = |v: &Value| int_list_of(name, v);
        match name {
            "sum" => {
                arity(1)?;
                let xs = int_list(&args[0])?;
                self.burn(xs.len())?;
                xs.iter()
                    .try_fold(0i64, |a, b| a.checked_add(*b))
                    .map(Value::Int)
                    .ok_or_else(|| ToolError::Runtime("integer overflow".into()))
            }
            "len" => {
                arity(1)?;
                match &args[0] {
                    Value::List(l) => Ok(Value::Int(l.items.len() as i64)),
                    Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
                    v => rt(format!("len needs a list or str, got {}", v.type_name())),
                }
            }
            "max" | "min" => {
                let items: Vec<Value> = if args.len() == 1 {
                    match &args[0] {
                        Value::List(l) => l.items.clone(),
                        Value::Str(s) => s.chars().map(|c| Value::str(&c.to_string())).collect(),
                        v => return rt(format!("{name} needs a list, got {}", v.type_name())),
                    }
                } else {
                    args
                };
                let mut it = items.into_iter();
                let Some(mut best) = it.next() else {
                    return rt(format!("{name} of an empty list"));
                };
                for v in it {
                    let o = self.compare(&v, &best)?;
                    if (name == "max" && o == Ordering::Greater)
                        || (name == "min" && o == Ordering::Less)
                    {
                        best = v;
                    }
                }
                Ok(best)
            }
            "count" => {
                arity(2)?;
                match (&args[0], &args[1]) {
                    (Value::Str(s), Value::Str(t)) => {
                        if t.is_empty() {
                            return rt("count of an empty string");
                        }
                        self.burn(s.len())?;
                        Ok(Value::Int(s.matches(&**t).count() as i64))
                    }
                    (Value::List(l), x) => {
                        self.burn(l.items.len())?;
                        let mut n = 0;
                        for y in &l.items {
                            if std::mem::discriminant(x) == std::mem::discriminant(y)
                                && self.equal(x, y)?
                            {
                                n += 1;
                            }
                        }
                        Ok(Value::Int(n))
                    }
                    (a, _) => rt(format!("count needs a list or str, got {}", a.type_name())),
                }
            }
            other => rt(format!("unknown builtin {other}")),
        }
    }

    /// The builtins that make a list (`sorted`, `reversed`, `range`, `map`, `filter`).
    fn sequence_builtin(&mut self, name: &str, args: Vec<Value>) -> Result<Value, ToolError> {
        let arity = |n: usize| check_arity(name, &args, n);
        match name {
            "sorted" => {
                arity(1)?;
                let items = match &args[0] {
                    Value::List(l) => l.items.clone(),
                    Value::Str(s) => s.chars().map(|c| Value::str(&c.to_string())).collect(),
                    v => return rt(format!("sorted needs a list, got {}", v.type_name())),
                };
                // A merge sort whose comparisons are fallible: an
                // incomparable pair or running out of fuel ends the sort
                // with that error (std's sort needs a total order).
                self.burn(items.len())?;
                let items = self.sort_values(items)?;
                self.new_list(items)
            }
            "reversed" => {
                arity(1)?;
                match &args[0] {
                    Value::List(l) => {
                        let mut v = l.items.clone();
                        v.reverse();
                        self.new_list(v)
                    }
                    Value::Str(s) => self.new_str(s.chars().rev().collect()),
                    v => rt(format!(
                        "reversed needs a list or str, got {}",
                        v.type_name()
                    )),
                }
            }
            "range" => {
                let ints: Vec<i64> = args
                    .iter()
                    .map(|a| match a {
                        Value::Int(i) => Ok(*i),
                        v => rt(format!("range needs int, got {}", v.type_name())),
                    })
                    .collect::<Result<_, _>>()?;
                let (a, b, s) = match ints.as_slice() {
                    [b] => (0, *b, 1),
                    [a, b] => (*a, *b, 1),
                    [a, b, s] => (*a, *b, *s),
                    _ => return rt("range takes 1 to 3 arguments"),
                };
                if s == 0 {
                    return rt("range step must not be zero");
                }
                let span = if s > 0 {
                    (b as i128 - a as i128).max(0)
                } else {
                    (a as i128 - b as i128).max(0)
                };
                let step = (s as i128).unsigned_abs();
                let n = (span as u128).div_ceil(step);
                self.alloc(1 + n)?;
                let v = (0..n as i128)
                    .map(|k| Value::Int((a as i128 + k * s as i128) as i64))
                    .collect();
                Ok(Value::list(v))
            }
            "map" | "filter" => {
                arity(2)?;
                let f = &args[0];
                if !matches!(f, Value::Builtin(_) | Value::Lambda(_)) {
                    return rt(format!(
                        "{name} needs a function first, got {}",
                        f.type_name()
                    ));
                }
                let Some(xs) = args[1].as_list() else {
                    return rt(format!(
                        "{name} needs a list second, got {}",
                        args[1].type_name()
                    ));
                };
                let mut out = Vec::with_capacity(xs.len());
                for x in xs {
                    let r = self.call(f, vec![x.clone()])?;
                    if name == "map" {
                        out.push(r);
                    } else {
                        match r {
                            Value::Bool(true) => out.push(x.clone()),
                            Value::Bool(false) => {}
                            v => {
                                return rt(format!(
                                    "filter predicate must return bool, got {}",
                                    v.type_name()
                                ))
                            }
                        }
                    }
                }
                self.new_list(out)
            }
            other => rt(format!("unknown builtin {other}")),
        }
    }

    /// The string builtins (`upper`, `lower`, `str`, `int`, `join`, `split`).
    fn text_builtin(&mut self, name: &str, args: Vec<Value>) -> Result<Value, ToolError> {
        let arity = |n: usize| check_arity(name, &args, n);
        match name {
            "upper" | "lower" => {
                arity(1)?;
                match &args[0] {
                    Value::Str(s) => self.new_str(if name == "upper" {
                        s.to_uppercase()
                    } else {
                        s.to_lowercase()
                    }),
                    v => rt(format!("{name} needs a str, got {}", v.type_name())),
                }
            }
            "str" => {
                arity(1)?;
                match &args[0] {
                    Value::Str(s) => Ok(Value::Str(s.clone())),
                    v => {
                        self.burn(v.weight())?;
                        let mut s = String::new();
                        write_value(&mut s, v, self.limits.max_weight);
                        self.new_str(s)
                    }
                }
            }
            "int" => {
                arity(1)?;
                match &args[0] {
                    Value::Int(i) => Ok(Value::Int(*i)),
                    Value::Bool(b) => Ok(Value::Int(*b as i64)),
                    Value::Str(s) => s.trim().parse::<i64>().map(Value::Int).or_else(|_| {
                        rt(format!(
                            "int: {:?} is not an integer",
                            cut(s.to_string(), 40)
                        ))
                    }),
                    v => rt(format!("int needs str, got {}", v.type_name())),
                }
            }
            "join" => {
                arity(2)?;
                let (Some(xs), Value::Str(sep)) = (args[0].as_list(), &args[1]) else {
                    return rt("join needs a list of str and a str separator");
                };
                let mut parts = Vec::with_capacity(xs.len());
                for x in xs {
                    match x {
                        Value::Str(s) => parts.push(s.to_string()),
                        v => return rt(format!("join needs str items, found {}", v.type_name())),
                    }
                }
                let total: u128 = parts.iter().map(|p| p.len() as u128).sum::<u128>()
                    + sep.len() as u128 * parts.len().saturating_sub(1) as u128;
                self.alloc(1 + total)?;
                Ok(Value::Str(Rc::from(parts.join(sep))))
            }
            "split" => {
                arity(1)?;
                let Value::Str(s) = &args[0] else {
                    return rt("split needs a str");
                };
                let parts: Vec<Value> = s.split_whitespace().map(Value::str).collect();
                self.new_list(parts)
            }
            other => rt(format!("unknown builtin {other}")),
        }
    }

    /// The number builtins (`abs`, `gcd`, `lcm`, `even`, `odd`).
    fn number_builtin(&mut self, name: &str, args: Vec<Value>) -> Result<Value, ToolError> {
        let arity = |n: usize| check_arity(name, &args, n);
        match name {
            "abs" => {
                arity(1)?;
                match &args[0] {
                    Value::Int(i) => i
                        .checked_abs()
                        .map(Value::Int)
                        .ok_or_else(|| ToolError::Runtime("integer overflow".into())),
                    v => rt(format!("abs needs int, got {}", v.type_name())),
                }
            }
            "gcd" | "lcm" => {
                arity(2)?;
                let (Value::Int(a), Value::Int(b)) = (&args[0], &args[1]) else {
                    return rt(format!("{name} needs two ints"));
                };
                let (a, b) = (a.unsigned_abs(), b.unsigned_abs());
                let g = gcd(a, b);
                self.burn(64)?;
                let r = if name == "gcd" {
                    g
                } else {
                    // lcm(0, x) = 0 (checked_div is None only when g == 0).
                    match a.checked_div(g) {
                        None => 0,
                        Some(q) => q
                            .checked_mul(b)
                            .ok_or_else(|| ToolError::Runtime("integer overflow".into()))?,
                    }
                };
                i64::try_from(r)
                    .map(Value::Int)
                    .map_err(|_| ToolError::Runtime("integer overflow".into()))
            }
            "even" | "odd" => {
                arity(1)?;
                match &args[0] {
                    Value::Int(i) => Ok(Value::Bool((i % 2 == 0) == (name == "even"))),
                    v => rt(format!("{name} needs int, got {}", v.type_name())),
                }
            }
            other => rt(format!("unknown builtin {other}")),
        }
    }
}

fn lookup(env: &Env, n: &str) -> Result<Value, ToolError> {
    let mut cur = env;
    while let Some(b) = cur {
        if &*b.name == n {
            return Ok(b.value.clone());
        }
        cur = &b.next;
    }
    match BUILTINS.iter().find(|b| **b == n) {
        Some(b) => Ok(Value::Builtin(b)),
        None => rt(format!("unknown name {n}")),
    }
}

fn index(len: usize, i: i64) -> Result<usize, ToolError> {
    let k = if i < 0 { len as i64 + i } else { i };
    if k < 0 || k >= len as i64 {
        return rt(format!("index {i} out of range for length {len}"));
    }
    Ok(k as usize)
}

fn floor_div(a: i64, b: i64) -> Option<i64> {
    let q = a.checked_div(b)?;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q.checked_sub(1)
    } else {
        Some(q)
    }
}

fn floor_mod(a: i64, b: i64) -> Option<i64> {
    let r = a.checked_rem(b)?;
    if r != 0 && ((r < 0) != (b < 0)) {
        Some(r + b)
    } else {
        Some(r)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One lexical token of a program as `(byte offset, text)`; used by the
/// scripted Coder to make plausible mistakes. Errors as [`run_program`].
pub fn token_spans(src: &str) -> Result<Vec<(usize, usize, TokenKind)>, ToolError> {
    let toks = lex(src)?;
    // Map char columns back to byte offsets.
    let offsets: Vec<usize> = src.char_indices().map(|(b, _)| b).collect();
    let mut out = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        if t.tok == Tok::Eof {
            break;
        }
        let start = offsets[t.col - 1];
        let end = toks
            .get(k + 1)
            .map(|n| offsets.get(n.col - 1).copied().unwrap_or(src.len()))
            .unwrap_or(src.len());
        let text_end = start + src[start..end].trim_end().len();
        let kind = match &t.tok {
            Tok::Int(_) => TokenKind::Int,
            Tok::Str(_) => TokenKind::Str,
            Tok::Ident(_) => TokenKind::Name,
            _ => TokenKind::Symbol,
        };
        out.push((start, text_end, kind));
    }
    Ok(out)
}

/// Kind of a token reported by [`token_spans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Int,
    Str,
    Name,
    Symbol,
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_format::SplitMix64;

    fn run(s: &str) -> String {
        run_to_observation(s, &Limits::default())
    }

    #[test]
    fn arithmetic_python_semantics() {
        assert_eq!(run("12 + 7 * 3"), "33");
        assert_eq!(run("(12 + 7) * 3"), "57");
        assert_eq!(run("-7 // 2"), "-4");
        assert_eq!(run("-7 % 3"), "2");
        assert_eq!(run("7 % -3"), "-2");
        assert_eq!(run("2 ** 10"), "1024");
        assert_eq!(run("-2 ** 2"), "-4");
        assert_eq!(run("2 ** 3 ** 2"), "512");
        assert_eq!(run("10 - 3 - 2"), "5");
        assert_eq!(run("gcd(12, 18)"), "6");
        assert_eq!(run("lcm(4, 6)"), "12");
        assert_eq!(run("1 < 2 and not (3 == 4)"), "true");
    }

    #[test]
    fn lists_strings_lambdas() {
        assert_eq!(run("sum(map(x => x * x, [3, 1, 4]))"), "26");
        assert_eq!(run("filter(even, [1, 2, 3, 4])"), "[2, 4]");
        assert_eq!(run("filter(x => x > 2, [1, 2, 3, 4])"), "[3, 4]");
        assert_eq!(run("sorted([3, 1, 2])"), "[1, 2, 3]");
        assert_eq!(run("reversed(sorted([3, 1, 2]))"), "[3, 2, 1]");
        assert_eq!(run("let xs = [5, 2, 8] in max(xs) - min(xs)"), "6");
        assert_eq!(run("upper(reversed(\"apple\"))"), "ELPPA");
        assert_eq!(run("count(\"banana\", \"a\")"), "3");
        assert_eq!(run("count([1, 2, 1], 1)"), "2");
        assert_eq!(run("len(\"abc\" + \"de\")"), "5");
        assert_eq!(run("\"ab\" * 3"), "ababab");
        assert_eq!(run("[\"a\", \"b\"]"), "[\"a\", \"b\"]");
        assert_eq!(run("range(2, 10, 3)"), "[2, 5, 8]");
        assert_eq!(run("range(5, 0, -2)"), "[5, 3, 1]");
        assert_eq!(run("[1, 2, 3][-1]"), "3");
        assert_eq!(run("if 3 > 2 then \"y\" else \"n\""), "y");
        assert_eq!(run("let k = 3 in map(x => x + k, [1, 2])"), "[4, 5]");
        assert_eq!(run("join(split(\"a b  c\"), \"-\")"), "a-b-c");
        assert_eq!(run("int(\"42\") + 1"), "43");
        assert_eq!(run("str([1, 2])"), "[1, 2]");
        assert_eq!(run("max(3, 9, 4)"), "9");
    }

    #[test]
    fn runtime_errors_are_clear() {
        assert_eq!(run("1 // 0"), "error: division by zero");
        assert_eq!(run("foo(1)"), "error: unknown name foo");
        assert_eq!(run("max([])"), "error: max of an empty list");
        assert_eq!(run("1 + \"a\""), "error: cannot apply '+' to int and str");
        assert_eq!(run("9223372036854775807 + 1"), "error: integer overflow");
        assert_eq!(
            run("sorted([1, \"a\"])"),
            "error: cannot compare str with int"
        );
        assert!(run("filter(x => x, [1])").starts_with("error: filter predicate"));
        assert!(run("[1][5]").contains("out of range"));
    }

    #[test]
    fn parse_errors_name_the_column() {
        let e = run_program("sum([1, 2 3])", &Limits::default()).unwrap_err();
        assert!(matches!(e, ToolError::Parse { column: 11, .. }), "{e}");
        let e = run_program("1 + ", &Limits::default()).unwrap_err();
        assert!(matches!(e, ToolError::Parse { column: 5, .. }), "{e}");
        let e = run_program("\"abc", &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parse error at column 1: unterminated string"
        );
        let e = run_program("1 $ 2", &Limits::default()).unwrap_err();
        assert!(matches!(e, ToolError::Parse { column: 3, .. }), "{e}");
        let e = run_program("1 < 2 < 3", &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("chained"), "{e}");
        assert!(run("99999999999999999999").contains("too large"));
    }

    #[test]
    fn hostile_infinite_recursion_is_bounded() {
        // The omega combinator: unbounded self-application.
        let e = run_program("(f => f(f))(f => f(f))", &Limits::default()).unwrap_err();
        assert!(matches!(e, ToolError::TooDeep { .. }), "{e}");
        // Wide rather than deep: exponential work runs out of fuel.
        let src = "let d = f => (x => f(f(x))) in \
                   let e = d(d) in let g = e(e) in g(g)(x => map(y => y, range(100)))([1])";
        let e = run_program(src, &Limits::default()).unwrap_err();
        assert!(
            matches!(e, ToolError::OutOfFuel { .. } | ToolError::TooDeep { .. }),
            "{e}"
        );
        // A huge depth limit is capped; must not overflow the 2 MiB test stack.
        let big = Limits {
            max_depth: 1_000_000,
            fuel: u64::MAX,
            ..Limits::default()
        };
        let e = run_program("(f => f(f))(f => f(f))", &big).unwrap_err();
        assert!(
            matches!(
                e,
                ToolError::TooDeep {
                    limit: MAX_DEPTH_CAP
                }
            ),
            "{e}"
        );
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let big = Limits {
            max_source: 1 << 20,
            ..big
        };
        let e = run_program(&deep, &big).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("nesting too deep (limit {MAX_DEPTH_CAP})")),
            "{e}"
        );
        // Deep but allowed: nested calls up to the cap evaluate fine.
        let mut src = String::from("1");
        for _ in 0..40 {
            src = format!("abs({src})");
        }
        assert_eq!(run_program(&src, &big).unwrap().canonical(), "1");
    }

    #[test]
    fn hostile_huge_allocations_are_refused() {
        for src in [
            "range(10 ** 12)",
            "range(10 ** 18)",
            "\"a\" * 10 ** 9",
            "[1, 2] * 10 ** 15",
            "let s = \"abcdefghij\" * 900 in s + s",
            "let a = range(1000) in let b = a + a + a + a in b + b + b",
        ] {
            let e = run_program(src, &Limits::default()).err();
            assert!(
                matches!(e, Some(ToolError::TooLarge { .. })),
                "{src}: {e:?}"
            );
        }
        // Sharing cannot hide size: doubling a list 40 times is weighed.
        let mut src = String::from("let a0 = [1, 2, 3, 4] in ");
        for i in 0..40 {
            src.push_str(&format!("let a{} = [a{i}, a{i}] in ", i + 1));
        }
        src.push_str("len(a40)");
        let e = run_program(&src, &Limits::default()).unwrap_err();
        assert!(matches!(e, ToolError::TooLarge { .. }), "{e}");
        // Fuel caps total work even when each value is small.
        let e = run_program(
            "map(x => sum(range(5000)), range(4000))",
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ToolError::OutOfFuel { .. }), "{e}");
    }

    #[test]
    fn hostile_deep_nesting_is_a_parse_error() {
        let l = Limits::default();
        for src in [
            format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("{}1", "-".repeat(10_000)),
            format!("{}true", "not ".repeat(10_000)),
            format!("2{}", " ** 2".repeat(10_000)),
            format!("{}1", "let x = 1 in ".repeat(10_000)),
        ] {
            let big = Limits {
                max_source: 1 << 20,
                ..l
            };
            let e = run_program(&src, &big).unwrap_err();
            match e {
                ToolError::Parse { column, message } => {
                    assert!(message.contains("nesting too deep"), "{message}");
                    assert!(column > 1);
                }
                e => panic!("{e}"),
            }
            // With the default source limit the program is refused before lexing.
            assert!(matches!(
                run_program(&src, &l),
                Err(ToolError::SourceTooLong { .. })
            ));
        }
    }

    #[test]
    fn random_token_soup_never_panics() {
        // Programs glued from random tokens: every one must end in a value
        // or a ToolError (a panic fails the test).
        const TOKS: [&str; 40] = [
            "(",
            ")",
            "[",
            "]",
            ",",
            "x",
            "y",
            "=>",
            "let",
            "=",
            "in",
            "if",
            "then",
            "else",
            "0",
            "1",
            "-3",
            "99999999999",
            "\"ab\"",
            "\"\"",
            "+",
            "-",
            "*",
            "//",
            "%",
            "**",
            "==",
            "<",
            "and",
            "not",
            "sum",
            "map",
            "filter",
            "range",
            "max",
            "sorted",
            "count",
            "reversed",
            "str",
            "lcm",
        ];
        let mut rng = SplitMix64::new(5);
        let lim = Limits::default();
        let (mut ok, mut err) = (0, 0);
        for _ in 0..20_000 {
            let n = 1 + rng.below_mod(12);
            let src: Vec<&str> = (0..n).map(|_| *rng.pick(&TOKS)).collect();
            match run_program(&src.join(" "), &lim) {
                Ok(v) => {
                    ok += 1;
                    let _ = observation_text(&Ok(v), &lim);
                }
                Err(e) => {
                    err += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        assert!(ok > 100 && err > 100, "{ok} {err}");
    }

    #[test]
    fn sorting_incomparable_values_is_an_error_not_a_panic() {
        for src in [
            "sorted([19, \"a\"] + reversed(range(19)))",
            "sorted([[1], [\"a\"], [2]])",
            "sorted([x => x, 1])",
            "max([1, \"a\", 2])",
        ] {
            let e = run_program(src, &Limits::default()).unwrap_err();
            assert!(e.to_string().contains("cannot compare"), "{src}: {e}");
        }
        // Out of fuel inside the comparisons: an error, never a panic.
        let lim = Limits {
            fuel: 300,
            ..Limits::default()
        };
        let e = run_program("sorted(reversed(range(200)))", &lim).unwrap_err();
        assert_eq!(e, ToolError::OutOfFuel { limit: 300 });
    }

    #[test]
    fn merge_sort_matches_std_sort_and_is_stable() {
        let mut rng = SplitMix64::new(11);
        for n in [0usize, 1, 2, 3, 7, 8, 9, 100, 257] {
            let xs: Vec<i64> = (0..n).map(|_| rng.range(-20, 20)).collect();
            let src = format!("sorted({xs:?})");
            let mut want = xs.clone();
            want.sort();
            let got = run_program(&src, &Limits::default()).unwrap().canonical();
            assert_eq!(got, format!("{want:?}"), "{src}");
        }
        // Stability is visible on lists compared by their first element only
        // when equal prefixes are followed by shorter lists: [1] < [1, 0].
        assert_eq!(
            run("sorted([[2], [1, 0], [1], [0, 5]])"),
            "[[0, 5], [1], [1, 0], [2]]"
        );
        assert_eq!(
            run("sorted(\"banana\")"),
            "[\"a\", \"a\", \"a\", \"b\", \"n\", \"n\"]"
        );
    }

    #[test]
    fn every_loop_iteration_costs_fuel() {
        // Repeating an empty list used to loop 10**18 times for free.
        let t = std::time::Instant::now();
        for src in [
            "[] * 10 ** 18",
            "[[]] * 0 + [] * 10 ** 15",
            "count([] * 10 ** 9, 1)",
        ] {
            let e = run_program(src, &Limits::default()).unwrap_err();
            assert!(
                matches!(e, ToolError::OutOfFuel { .. } | ToolError::TooLarge { .. }),
                "{src}: {e}"
            );
        }
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
        assert_eq!(run("[] * 3"), "[]");
        assert_eq!(run("[1] * 3"), "[1, 1, 1]");
    }

    #[test]
    fn gcd_lcm_edge_cases() {
        assert_eq!(run("lcm(0, 5)"), "0");
        assert_eq!(run("gcd(0, 0)"), "0");
        assert_eq!(run("gcd(-12, 18)"), "6");
        assert_eq!(
            run("lcm(9223372036854775807, 2)"),
            "error: integer overflow"
        );
    }

    #[test]
    fn output_is_cut() {
        let obs = run("range(1000)");
        assert!(obs.len() <= Limits::default().max_output + 3);
        assert!(obs.ends_with("..."));
    }

    #[test]
    fn token_spans_cover_tokens() {
        let src = "count(\"a b\", 12)";
        let spans = token_spans(src).unwrap();
        let texts: Vec<&str> = spans.iter().map(|(a, b, _)| &src[*a..*b]).collect();
        assert_eq!(texts, vec!["count", "(", "\"a b\"", ",", "12", ")"]);
    }
}
