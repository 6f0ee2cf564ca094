//! `list --json` (kind `list`): the tokens pivault sees, one per reader.

use super::Document;
use crate::piv::TokenInfo;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenList {
    /// Empty when no token is inserted (the run then exits 3).
    pub tokens: Vec<TokenInfo>,
}

impl Document for TokenList {
    fn kind(&self) -> &'static str {
        "list"
    }
}
