//! ANSI colour for terminal output, or none: one switch, decided once per command.

#[derive(Clone, Copy, Debug)]
pub struct Paint {
    pub on: bool,
}

impl Paint {
    /// `text` in the SGR style `code` (`"1;31"`: bold red) when colour is on.
    pub fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    pub fn green(&self, t: &str) -> String {
        self.wrap("32", t)
    }
    pub fn red(&self, t: &str) -> String {
        self.wrap("31", t)
    }
    pub fn yellow(&self, t: &str) -> String {
        self.wrap("33", t)
    }
    pub fn bold(&self, t: &str) -> String {
        self.wrap("1", t)
    }
    /// The label that starts an error message.
    pub fn error(&self) -> String {
        self.wrap("1;31", "Error:")
    }
}
