//! The conformance suite's support code: reading the lab's public state
//! (`cargo lab status --json`). The checks themselves live in `tests/`.
