//! Card numbers: the contract's format, and the only form in which one may reach a log.

/// `dddd-dddd-dddd-dddd`, exactly: the contract's pattern, without a regex engine on the hot path.
/// Both the cart (before calling anyone) and the authorizer check it.
pub fn is_valid_format(number: &str) -> bool {
    let bytes = number.as_bytes();
    bytes.len() == 19
        && bytes.iter().enumerate().all(|(i, b)| {
            if i % 5 == 4 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Masks a card number for logs: only the last four digits survive.
pub fn mask(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return "****".to_string();
    }
    let last4: String = digits[digits.len() - 4..].iter().collect();
    format!("****-****-****-{last4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_the_contract_pattern() {
        assert!(is_valid_format("1234-5678-9012-3456"));
        for bad in [
            "",
            "1234567890123456",
            "1234-5678-9012-345",
            "1234-5678-9012-34567",
            "1234 5678 9012 3456",
            "abcd-5678-9012-3456",
            "1234-5678-9012-3456\n",
            "１２３４-5678-9012-3456",
        ] {
            assert!(!is_valid_format(bad), "{bad:?}");
        }
    }

    #[test]
    fn masks_all_but_last_four() {
        assert_eq!(mask("1234-5678-9012-3456"), "****-****-****-3456");
        assert_eq!(mask("12"), "****");
        assert!(!mask("1234567890123456").contains("1234"));
    }
}
