//! An arithmetic evaluator for the `calculator` tool: `+ - * / % ^`, parentheses, unary minus
//! and decimals, by recursive descent. Pure functions; depends on nothing.
//!
//! Depends on nothing in the crate.

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
/// A message that says what is wrong: an unexpected character, a missing parenthesis, division
/// by zero, or a result too large to represent.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    let mut parser = Parser {
        chars: expression.chars().collect(),
        pos: 0,
        depth: 0,
    };
    parser.skip_spaces();
    if parser.at_end() {
        return Err("the expression is empty".to_owned());
    }
    let value = parser.sum()?;
    parser.skip_spaces();
    if let Some(c) = parser.peek() {
        return Err(format!("unexpected {c:?} at position {}", parser.pos + 1));
    }
    if !value.is_finite() {
        return Err("the result is too large".to_owned());
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

    fn sum(&mut self) -> Result<f64, String> {
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

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.unary()?;
        loop {
            if self.eat('*') {
                value *= self.unary()?;
            } else if self.eat('/') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err("division by zero".to_owned());
                }
                value /= divisor;
            } else if self.eat('%') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err("modulo by zero".to_owned());
                }
                value %= divisor;
            } else {
                return Ok(value);
            }
        }
    }

    fn unary(&mut self) -> Result<f64, String> {
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

    fn power(&mut self) -> Result<f64, String> {
        let base = self.primary()?;
        if self.eat('^') {
            let exponent = self.unary()?;
            Ok(base.powf(exponent))
        } else {
            Ok(base)
        }
    }

    fn primary(&mut self) -> Result<f64, String> {
        self.skip_spaces();
        if self.eat('(') {
            self.descend()?;
            let value = self.sum()?;
            self.depth -= 1;
            if !self.eat(')') {
                return Err(format!("missing ')' at position {}", self.pos + 1));
            }
            return Ok(value);
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(match self.peek() {
                Some(c) => format!("unexpected {c:?} at position {}", self.pos + 1),
                None => "the expression ends too soon".to_owned(),
            });
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        digits
            .parse()
            .map_err(|_| format!("{digits:?} is not a number"))
    }

    fn descend(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err("the expression is nested too deeply".to_owned())
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
        assert_eq!(evaluate("1 / 0"), Err("division by zero".to_owned()));
        assert_eq!(evaluate("5 % 0"), Err("modulo by zero".to_owned()));
        assert!(evaluate("").unwrap_err().contains("empty"));
        assert!(evaluate("(1 + 2").unwrap_err().contains("missing ')'"));
        assert!(evaluate("1 + x").unwrap_err().contains("'x'"));
        assert!(evaluate("1 2").unwrap_err().contains("unexpected"));
        assert!(evaluate("1.2.3").unwrap_err().contains("not a number"));
        assert!(evaluate("10 ^ 400").unwrap_err().contains("too large"));
        assert!(
            evaluate(&"(".repeat(100_000))
                .unwrap_err()
                .contains("deeply")
        );
        assert!(
            evaluate(&"-".repeat(100_000))
                .unwrap_err()
                .contains("deeply")
        );
    }

    #[test]
    fn formats_whole_numbers_without_a_point() {
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(-12.0), "-12");
        assert_eq!(format_number(0.25), "0.25");
    }
}
