//! An arithmetic evaluator for the `calculator` tool: `+ - * / % ^`, parentheses, unary minus
//! and decimals, by recursive descent, and [`ExpressionError`], why an expression has no value.
//! Pure functions; depends on nothing.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::num::ParseFloatError;

/// Deepest nesting of parentheses and unary signs accepted, so that hostile input cannot
/// overflow the stack.
const MAX_DEPTH: usize = 200;

/// Evaluates an expression.
///
/// Precedence from loosest to tightest: `+ -`, then `* / %`, then unary `-`/`+`, then `^`
/// (right-associative, so `2^3^2` is `2^9` and `-2^2` is `-4`).
///
/// # Errors
///
/// An [`ExpressionError`] that says what is wrong: an unexpected character, a missing
/// parenthesis, division by zero, or a result too large to represent.
pub fn evaluate(expression: &str) -> Result<f64, ExpressionError> {
    let mut parser = Parser {
        chars: expression.chars().collect(),
        pos: 0,
        depth: 0,
    };
    parser.skip_spaces();
    if parser.at_end() {
        return Err(ExpressionError::Empty);
    }
    let value = parser.sum()?;
    parser.skip_spaces();
    if let Some(found) = parser.peek() {
        return Err(ExpressionError::Unexpected {
            found,
            position: parser.pos + 1,
        });
    }
    if !value.is_finite() {
        return Err(ExpressionError::TooLarge);
    }
    Ok(value)
}

/// Writes a result the way a person would: whole numbers without a decimal point.
pub fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Why an expression has no value. The `Display` text is what the model reads, so that it can
/// write the expression again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpressionError {
    /// Nothing but spaces.
    Empty,
    /// A character that cannot stand where it stands.
    Unexpected {
        /// The character.
        found: char,
        /// Where it stands, counting characters from 1.
        position: usize,
    },
    /// A `(` without its `)`.
    MissingParenthesis {
        /// Where the `)` was expected, counting characters from 1.
        position: usize,
    },
    /// The expression stops where a number or a `(` must come.
    EndsTooSoon,
    /// Digits and points that do not make a number (`1.2.3`).
    NotANumber {
        /// The text read as a number.
        text: String,
        /// Why it is not one.
        source: ParseFloatError,
    },
    /// A division by zero.
    DivisionByZero,
    /// A remainder of a division by zero.
    ModuloByZero,
    /// The result is too large to represent.
    TooLarge,
    /// Parentheses or signs nested deeper than the evaluator follows.
    TooDeep,
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpressionError::Empty => write!(f, "the expression is empty"),
            ExpressionError::Unexpected { found, position } => {
                write!(f, "unexpected {found:?} at position {position}")
            }
            ExpressionError::MissingParenthesis { position } => {
                write!(f, "missing ')' at position {position}")
            }
            ExpressionError::EndsTooSoon => write!(f, "the expression ends too soon"),
            ExpressionError::NotANumber { text, .. } => write!(f, "{text:?} is not a number"),
            ExpressionError::DivisionByZero => write!(f, "division by zero"),
            ExpressionError::ModuloByZero => write!(f, "modulo by zero"),
            ExpressionError::TooLarge => write!(f, "the result is too large"),
            ExpressionError::TooDeep => write!(f, "the expression is nested too deeply"),
        }
    }
}

impl std::error::Error for ExpressionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExpressionError::NotANumber { source, .. } => Some(source),
            _ => None,
        }
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Consumes `c` if it is the next character after spaces.
    fn eat(&mut self, c: char) -> bool {
        self.skip_spaces();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<f64, ExpressionError> {
        let mut value = self.product()?;
        loop {
            if self.eat('+') {
                value += self.product()?;
            } else if self.eat('-') {
                value -= self.product()?;
            } else {
                return Ok(value);
            }
        }
    }

    fn product(&mut self) -> Result<f64, ExpressionError> {
        let mut value = self.unary()?;
        loop {
            if self.eat('*') {
                value *= self.unary()?;
            } else if self.eat('/') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err(ExpressionError::DivisionByZero);
                }
                value /= divisor;
            } else if self.eat('%') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err(ExpressionError::ModuloByZero);
                }
                value %= divisor;
            } else {
                return Ok(value);
            }
        }
    }

    fn unary(&mut self) -> Result<f64, ExpressionError> {
        self.descend()?;
        let value = if self.eat('-') {
            self.unary().map(|v| -v)
        } else if self.eat('+') {
            self.unary()
        } else {
            self.power()
        };
        self.depth -= 1;
        value
    }

    fn power(&mut self) -> Result<f64, ExpressionError> {
        let base = self.primary()?;
        if self.eat('^') {
            let exponent = self.unary()?;
            Ok(base.powf(exponent))
        } else {
            Ok(base)
        }
    }

    fn primary(&mut self) -> Result<f64, ExpressionError> {
        self.skip_spaces();
        if self.eat('(') {
            self.descend()?;
            let value = self.sum()?;
            self.depth -= 1;
            if !self.eat(')') {
                return Err(ExpressionError::MissingParenthesis {
                    position: self.pos + 1,
                });
            }
            return Ok(value);
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(match self.peek() {
                Some(found) => ExpressionError::Unexpected {
                    found,
                    position: self.pos + 1,
                },
                None => ExpressionError::EndsTooSoon,
            });
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse()
            .map_err(|source| ExpressionError::NotANumber { text, source })
    }

    fn descend(&mut self) -> Result<(), ExpressionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(ExpressionError::TooDeep)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_precedence_and_associativity() {
        let cases = [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("10 - 4 - 3", 3.0),
            ("2 ^ 3 ^ 2", 512.0),
            ("-2 ^ 2", -4.0),
            ("(-2) ^ 2", 4.0),
            ("7 % 4", 3.0),
            ("1.5 * 4", 6.0),
            ("--3", 3.0),
            ("2 * -3", -6.0),
            ("100 / 8", 12.5),
        ];
        for (expression, expected) in cases {
            assert_eq!(evaluate(expression), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let error = |expression: &str| evaluate(expression).unwrap_err().to_string();
        assert_eq!(evaluate("1 / 0"), Err(ExpressionError::DivisionByZero));
        assert_eq!(error("1 / 0"), "division by zero");
        assert_eq!(error("5 % 0"), "modulo by zero");
        assert_eq!(error(""), "the expression is empty");
        assert_eq!(error("(1 + 2"), "missing ')' at position 7");
        assert_eq!(error("1 + x"), "unexpected 'x' at position 5");
        assert_eq!(error("1 2"), "unexpected '2' at position 3");
        assert_eq!(error("1 +"), "the expression ends too soon");
        assert_eq!(error("1.2.3"), "\"1.2.3\" is not a number");
        assert!(std::error::Error::source(&evaluate("1.2.3").unwrap_err()).is_some());
        assert_eq!(error("10 ^ 400"), "the result is too large");
        assert_eq!(
            error(&"(".repeat(100_000)),
            "the expression is nested too deeply"
        );
        assert_eq!(
            evaluate(&"-".repeat(100_000)),
            Err(ExpressionError::TooDeep)
        );
    }

    #[test]
    fn formats_whole_numbers_without_a_point() {
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(-12.0), "-12");
        assert_eq!(format_number(0.25), "0.25");
    }
}
