//! The class server's secrets, and the one place that decides what a request may open.
//!
//! Each running lab (each workshop copy) has its own token, and the instructor has one for the
//! whole state directory. A token is 32 random bytes from the kernel, written as 64 hex
//! digits to a file of mode 0600 (`<state>/<lab>/web.token`, `<state>/instructor.token`),
//! created exclusively and never through a symbolic link. Tokens are compared in constant
//! time, and every known token is compared every time, so timing tells nothing about them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::state::StateDir;

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// The instructor's token file, in the state directory's root.
const INSTRUCTOR_FILE: &str = "instructor.token";

/// A lab's token file, in its state directory.
const LAB_FILE: &str = "web.token";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The instructor: every lab, the class page.
    Instructor,
    /// The student of one lab (one workshop copy): that lab's page, terminals and actions.
    Student(String),
}

impl Role {
    /// Whether this role may see and act on lab `lab`.
    pub fn may_open(&self, lab: &str) -> bool {
        match self {
            Role::Instructor => true,
            Role::Student(own) => own == lab,
        }
    }
}

/// Every token the server honours.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    instructor: String,
    /// Each lab's run mark and token.
    labs: BTreeMap<String, (String, String)>,
}

impl Tokens {
    /// The instructor's token and one for each of `labs`, read from the state directory, or
    /// made and kept there on first use.
    pub fn load(state: &StateDir, labs: &[String]) -> io::Result<Tokens> {
        let instructor = ensure(&state.root().join(INSTRUCTOR_FILE))?;
        let mut t = Tokens {
            instructor,
            labs: BTreeMap::new(),
        };
        let runs: Vec<(String, String)> = labs.iter().map(|l| (l.clone(), String::new())).collect();
        t.refresh(state, &runs)?;
        Ok(t)
    }

    /// Follows the running labs, each named with its run's mark ([`crate::state::Stamp`]'s
    /// `made`): tokens of labs that are gone, or were brought up again under their name, are
    /// forgotten (the first run's token opens nothing any more), and new labs and new runs
    /// get theirs. A lab whose token cannot be read or made is left out (it opens nothing),
    /// and the first such error returned.
    pub fn refresh(&mut self, state: &StateDir, labs: &[(String, String)]) -> io::Result<()> {
        self.labs
            .retain(|l, (made, _)| labs.iter().any(|(n, m)| n == l && m == made));
        let mut first_error = None;
        for (lab, made) in labs {
            if self.labs.contains_key(lab) {
                continue;
            }
            match ensure(&state.lab_dir(lab).join(LAB_FILE)) {
                Ok(token) => {
                    self.labs.insert(lab.clone(), (made.clone(), token));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The instructor's token.
    pub fn instructor(&self) -> &str {
        &self.instructor
    }

    /// Lab `lab`'s token, if the lab is known.
    pub fn lab(&self, lab: &str) -> Option<&str> {
        self.labs.get(lab).map(|(_, token)| token.as_str())
    }

    /// Whose token `presented` is, if anyone's.
    pub fn role(&self, presented: &str) -> Option<Role> {
        let mut found = None;
        if same(presented, &self.instructor) {
            found = Some(Role::Instructor);
        }
        for (lab, (_, token)) in &self.labs {
            if same(presented, token) && found.is_none() {
                found = Some(Role::Student(lab.clone()));
            }
        }
        found
    }
}

/// Compares two tokens in time that depends only on their lengths (which are public).
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads the token in `path`, or makes one there (mode 0600, never through a link).
fn ensure(path: &Path) -> io::Result<String> {
    let mut open = OpenOptions::new();
    open.read(true).custom_flags(libc::O_NOFOLLOW);
    match open.open(path) {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            let text = text.trim().to_string();
            if text.len() == TOKEN_BYTES * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(text);
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a vxlab token; remove it", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = crate::host::random::hex(TOKEN_BYTES)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            writeln!(f, "{token}")?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_random_private_kept_and_each_opens_only_its_lab() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path());
        let labs: Vec<String> = vec!["lab-1".into(), "lab-2".into()];
        for l in &labs {
            std::fs::create_dir(dir.path().join(l)).unwrap();
        }
        let t = Tokens::load(&state, &labs).unwrap();
        let (a, b) = (t.lab("lab-1").unwrap(), t.lab("lab-2").unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(dir.path().join("lab-1/web.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Read back, not made anew.
        let mut again = Tokens::load(&state, &labs).unwrap();
        assert_eq!(again.lab("lab-1"), Some(a));
        assert_eq!(again.instructor(), t.instructor());
        // lab-1 taken down and brought up again: its new run has a new token, and the first
        // run's opens nothing.
        std::fs::remove_dir_all(dir.path().join("lab-1")).unwrap();
        std::fs::create_dir(dir.path().join("lab-1")).unwrap();
        let runs = [("lab-1".to_string(), "b3".to_string())];
        again.refresh(&state, &runs).unwrap();
        let renewed = again.lab("lab-1").unwrap().to_string();
        assert_ne!(renewed, a);
        assert_eq!(again.role(a), None);
        assert_eq!(again.role(&renewed), Some(Role::Student("lab-1".into())));

        assert_eq!(t.role(a), Some(Role::Student("lab-1".into())));
        assert_eq!(t.role(t.instructor()), Some(Role::Instructor));
        assert_eq!(t.role(&a[..63]), None);
        assert_eq!(t.role(""), None);
        assert!(Role::Student("lab-1".into()).may_open("lab-1"));
        assert!(!Role::Student("lab-1".into()).may_open("lab-2"));
    }

    #[test]
    fn a_token_file_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("instructor.token")).unwrap();
        assert!(Tokens::load(&StateDir::at(dir.path()), &[]).is_err());
    }
}
