//! Vault's pre-flight: before a key is made that cannot be taken back, Vault has said it
//! would hear a sign request for each role of the plan (login fresh, policy allows the
//! path, role exists).

use crate::enroll::{Context, Issuer};
use crate::error::Error;
use crate::piv::Role;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

/// Roles whose sign path Vault already accepted: one pre-flight request per role per run
/// (a station run covers many tokens), all roles at once. `enroll` starts it on another
/// thread ([`Preflight::start`]) so the login and the pre-flight travel while the token is
/// opened and unlocked; [`Preflight::settle`] waits for the answers before anything that
/// could not be undone (a key generated in place) and before the first sign.
#[derive(Debug, Default)]
pub struct Preflight {
    done: Mutex<BTreeSet<&'static str>>,
    /// Answers still travelling: the roles asked, and where the outcome arrives.
    pending: Mutex<Option<Pending>>,
    /// Vault refused the pre-flight (reported by `settle`).
    refused: AtomicBool,
}

#[derive(Debug)]
struct Pending {
    roles: BTreeSet<&'static str>,
    answer: Receiver<Result<(), Error>>,
}

impl Preflight {
    /// Ask Vault about `roles` on a thread of its own (it logs in first when the issuer
    /// has not yet); nothing waits for the answers until [`Preflight::settle`].
    pub fn start<I>(issuer: Arc<I>, roles: &[Role]) -> Preflight
    where
        I: Issuer + Send + Sync + ?Sized + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = roles.to_vec();
        std::thread::spawn(move || {
            let _ = tx.send(ask_all(&*issuer, &asked));
        });
        Preflight {
            done: Mutex::default(),
            pending: Mutex::new(Some(Pending {
                roles: roles.iter().map(|r| r.name()).collect(),
                answer: rx,
            })),
            refused: AtomicBool::new(false),
        }
    }

    /// Wait for the answers of [`Preflight::start`], if any are still out.
    pub fn settle(&self) -> Result<(), Error> {
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        let Some(p) = pending else {
            return Ok(());
        };
        match p.answer.recv() {
            Ok(Ok(())) => {
                if let Ok(mut d) = self.done.lock() {
                    d.extend(p.roles);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.refused.store(true, Ordering::SeqCst);
                Err(e)
            }
            Err(_) => Err(Error::Incomplete(
                "the Vault pre-flight thread ended without an answer".into(),
            )),
        }
    }

    /// Whether [`Preflight::settle`] reported Vault's refusal.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// Make sure Vault was asked (login fresh, policy allows the path, role exists) about
    /// every role of the plan not asked before in this run. Answers still travelling from
    /// [`Preflight::start`] for these roles are left to [`Preflight::settle`]; other roles
    /// are asked now, all at once. Nothing on the token has been touched yet.
    pub fn check(
        &self,
        ctx: &Context<'_>,
        roles: impl IntoIterator<Item = Role>,
    ) -> Result<(), Error> {
        let travelling: BTreeSet<&'static str> = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.roles.clone()))
            .unwrap_or_default();
        let done = self.done.lock().map(|d| d.clone()).unwrap_or_default();
        let mut missing: Vec<Role> = Vec::new();
        for role in roles {
            if !done.contains(role.name()) && !travelling.contains(role.name()) {
                missing.push(role);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        ask_all(ctx.issuer, &missing)?;
        if let Ok(mut d) = self.done.lock() {
            d.extend(missing.iter().map(|r| r.name()));
        }
        Ok(())
    }
}

/// One pre-flight request per distinct role (however many slots share it), sent together
/// (they are independent and read-only): one round trip instead of one per role. The first
/// error in the roles' order is the one reported.
fn ask_all<I: Issuer + Sync + ?Sized>(issuer: &I, roles: &[Role]) -> Result<(), Error> {
    let mut distinct: Vec<Role> = Vec::with_capacity(roles.len());
    for r in roles {
        if !distinct.contains(r) {
            distinct.push(*r);
        }
    }
    let roles = distinct.as_slice();
    if let [role] = roles {
        return issuer.preflight(*role);
    }
    std::thread::scope(|s| {
        let asks: Vec<_> = roles
            .iter()
            .map(|&role| s.spawn(move || issuer.preflight(role)))
            .collect();
        let mut first = Ok(());
        for a in asks {
            let r = a.join().unwrap_or_else(|_| {
                Err(Error::Incomplete(
                    "a Vault pre-flight thread panicked".into(),
                ))
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::Subject;
    use crate::enroll::Issued;
    use std::sync::atomic::AtomicU32;

    /// Counts pre-flight requests; refuses the S/MIME role when told to.
    struct Counting {
        asked: AtomicU32,
        refuse: bool,
    }

    impl Issuer for Counting {
        fn preflight(&self, role: Role) -> Result<(), Error> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.refuse && role == Role::EmailSigning {
                return Err(Error::Usage(format!("refused {role}")));
            }
            Ok(())
        }
        fn issue(&self, _: Role, _: &str, _: &Subject, _: Option<&str>) -> Result<Issued, Error> {
            Err(Error::Usage("not in this test".into()))
        }
    }

    const PLAN: [Role; 4] = [
        Role::Auth,
        Role::EmailSigning,
        Role::EmailSigning,
        Role::Piv,
    ];

    #[test]
    fn one_request_per_role_however_many_slots_share_it() {
        let i = Arc::new(Counting {
            asked: AtomicU32::new(0),
            refuse: false,
        });
        let p = Preflight::start(i.clone(), &PLAN);
        assert!(p.settle().is_ok());
        assert_eq!(i.asked.load(Ordering::SeqCst), 3);
        assert!(!p.refused());
        // Settled twice: nothing more is asked.
        assert!(p.settle().is_ok());
        assert_eq!(i.asked.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_refusal_is_reported_once_settled() {
        let i = Arc::new(Counting {
            asked: AtomicU32::new(0),
            refuse: true,
        });
        let p = Preflight::start(i, &PLAN);
        let e = p.settle().expect_err("refused");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(p.refused());
    }
}
