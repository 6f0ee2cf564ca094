//! The "firmware" under the PIV applet: a trussed service with the backends
//! `piv-authenticator` needs, run in-process on this thread.
//!
//! Three things differ from trussed's stock `virt` platform, each on purpose:
//! - the RNG is seeded from the operating system (the stock platform uses a constant seed,
//!   so every virtual card would generate the same keys);
//! - the service runs inline: a syscall processes the request at once on the caller's thread
//!   (the stock runner polls a channel from a second thread with a 1 ms sleep per round, which
//!   adds milliseconds to every APDU and burns a core while the client spins);
//! - the client is shared ([`SharedClient`]) so that the applet can be rebuilt on a card reset
//!   with the same trussed client: `piv-authenticator` never clears its "PIN verified" /
//!   "management key authenticated" flags itself, a real YubiKey forgets them on reset.

use std::{cell::RefCell, rc::Rc, task::Poll};

use rand_chacha::ChaCha8Rng;
use rand_core::{OsRng, SeedableRng as _};
use trussed::{
    backend::{Backend as _, BackendId},
    pipe::{ServiceEndpoint, TrussedChannel},
    platform,
    serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl},
    service::{Service, ServiceResources},
    types::{Context, CoreContext},
    virt, ClientImplementation,
};
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::{
    api::{reply, request, Reply, RequestVariant},
    serde_extensions::{Extension, ExtensionClient},
    types::Location,
    ClientResult, Error, FutureResult, InterruptFlag, PollClient,
};
use trussed_hpke::HpkeExtension;
use trussed_rsa_alloc::SoftwareRsa;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

/// The custom backends, in the order the service tries them for a core request
/// (the trussed core backend comes last).
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// Chunked file I/O, HPKE and wrap-key-to-file (used for PIN-protected data objects).
    Staging,
    /// PIN storage and PIN-derived keys.
    Auth,
    /// RSA 2048/3072/4096 in software.
    Rsa,
}

const BACKENDS: &[BackendId<Backend>] = &[
    BackendId::Custom(Backend::Staging),
    BackendId::Custom(Backend::Auth),
    BackendId::Custom(Backend::Rsa),
    BackendId::Core,
];

/// The serde extensions `piv-authenticator` calls, with the ids this runner assigns them.
#[derive(Debug, Clone, Copy)]
pub enum ExtensionKind {
    Auth = 0,
    Chunked = 1,
    Hpke = 2,
    WrapKeyToFile = 3,
}

impl From<ExtensionKind> for u8 {
    fn from(kind: ExtensionKind) -> u8 {
        kind as u8
    }
}

impl TryFrom<u8> for ExtensionKind {
    type Error = Error;

    fn try_from(id: u8) -> Result<Self, Error> {
        Ok(match id {
            0 => Self::Auth,
            1 => Self::Chunked,
            2 => Self::Hpke,
            3 => Self::WrapKeyToFile,
            _ => return Err(Error::InternalError),
        })
    }
}

impl ExtensionId<AuthExtension> for Dispatch {
    type Id = ExtensionKind;
    const ID: ExtensionKind = ExtensionKind::Auth;
}
impl ExtensionId<ChunkedExtension> for Dispatch {
    type Id = ExtensionKind;
    const ID: ExtensionKind = ExtensionKind::Chunked;
}
impl ExtensionId<HpkeExtension> for Dispatch {
    type Id = ExtensionKind;
    const ID: ExtensionKind = ExtensionKind::Hpke;
}
impl ExtensionId<WrapKeyToFileExtension> for Dispatch {
    type Id = ExtensionKind;
    const ID: ExtensionKind = ExtensionKind::WrapKeyToFile;
}

/// Routes requests to the backends above.
pub struct Dispatch {
    auth: AuthBackend,
    staging: StagingBackend,
}

/// Per-client state of the backends.
#[derive(Default)]
pub struct DispatchContext {
    auth: AuthContext,
    staging: StagingContext,
}

impl Dispatch {
    fn new() -> Self {
        Self {
            // No hardware key: the PIN KDF salt lives in the internal filesystem, which is
            // part of the persisted state, so PINs survive a restart with `--state`.
            auth: AuthBackend::new(Location::Internal, FilesystemLayout::V0),
            staging: StagingBackend::new(),
        }
    }
}

impl ExtensionDispatch for Dispatch {
    type BackendId = Backend;
    type Context = DispatchContext;
    type ExtensionId = ExtensionKind;

    fn core_request<P: platform::Platform>(
        &mut self,
        backend: &Backend,
        ctx: &mut Context<DispatchContext>,
        request: &trussed_core::api::Request,
        resources: &mut ServiceResources<P>,
    ) -> Result<Reply, Error> {
        match backend {
            Backend::Staging => {
                self.staging
                    .request(&mut ctx.core, &mut ctx.backends.staging, request, resources)
            }
            Backend::Auth => {
                self.auth
                    .request(&mut ctx.core, &mut ctx.backends.auth, request, resources)
            }
            Backend::Rsa => SoftwareRsa.request(&mut ctx.core, &mut (), request, resources),
        }
    }

    fn extension_request<P: platform::Platform>(
        &mut self,
        backend: &Backend,
        extension: &ExtensionKind,
        ctx: &mut Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core = &mut ctx.core;
        match (backend, extension) {
            (Backend::Auth, ExtensionKind::Auth) => self.auth.extension_request_serialized(
                core,
                &mut ctx.backends.auth,
                request,
                resources,
            ),
            (Backend::Staging, ExtensionKind::Chunked) => {
                ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (Backend::Staging, ExtensionKind::Hpke) => {
                ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (Backend::Staging, ExtensionKind::WrapKeyToFile) => {
                ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

/// trussed's platform: our RNG, the virt store (filesystems we provide), the virt UI
/// (user presence is always given: the emulator has no touch sensor).
pub struct VcardPlatform<'a> {
    rng: ChaCha8Rng,
    store: virt::Store<'a>,
    ui: virt::UserInterface,
}

impl<'a> platform::Platform for VcardPlatform<'a> {
    type R = ChaCha8Rng;
    type S = virt::Store<'a>;
    type UI = virt::UserInterface;

    fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    fn store(&self) -> virt::Store<'a> {
        self.store
    }

    fn user_interface(&mut self) -> &mut virt::UserInterface {
        &mut self.ui
    }
}

struct Runner<'a> {
    service: Service<VcardPlatform<'a>, Dispatch>,
    endpoints: Vec<ServiceEndpoint<'a, Backend, DispatchContext>>,
}

/// Runs the service right away on the calling thread when the client makes a request.
#[derive(Clone)]
pub struct InlineSyscall<'a>(Rc<RefCell<Runner<'a>>>);

impl platform::Syscall for InlineSyscall<'_> {
    fn syscall(&mut self) {
        let runner = &mut *self.0.borrow_mut();
        runner.service.process(&mut runner.endpoints);
    }
}

/// The trussed client the PIV applet runs on.
pub type VcardClient<'a> = SharedClient<ClientImplementation<'a, InlineSyscall<'a>, Dispatch>>;

/// Builds the service on `store` and calls `f` with a client for the application `client_id`.
pub fn with_client<R>(
    store: virt::Store<'_>,
    client_id: &str,
    f: impl FnOnce(VcardClient<'_>) -> R,
) -> Result<R, rand_core::Error> {
    // Seed from the OS; trussed additionally mixes this with the seed it keeps in the
    // internal filesystem ("rng-state.bin"), so restarts never repeat a stream.
    let rng = ChaCha8Rng::from_rng(OsRng)?;
    let platform = VcardPlatform {
        rng,
        store,
        ui: virt::UserInterface::new(),
    };
    let channel = TrussedChannel::new();
    let (requester, responder) = channel
        .split()
        .expect("a fresh trussed channel splits once");
    let client_path = client_id
        .try_into()
        .expect("client id is a valid trussed path");
    let runner = Runner {
        service: Service::with_dispatch(platform, Dispatch::new()),
        endpoints: vec![ServiceEndpoint::new(
            responder,
            CoreContext::new(client_path),
            BACKENDS,
        )],
    };
    let syscall = InlineSyscall(Rc::new(RefCell::new(runner)));
    let client = ClientImplementation::new(requester, syscall, None);
    Ok(f(SharedClient::new(client)))
}

/// A trussed client that can be handed to several owners in turn (one at a time).
///
/// `piv_authenticator::Authenticator` owns its client and has no way to give it back or to
/// clear its volatile security state; to emulate a card reset we drop the authenticator and
/// build a new one on a clone of this handle.
pub struct SharedClient<C>(Rc<RefCell<C>>);

impl<C> SharedClient<C> {
    pub fn new(client: C) -> Self {
        Self(Rc::new(RefCell::new(client)))
    }
}

impl<C> Clone for SharedClient<C> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<C: PollClient> PollClient for SharedClient<C> {
    fn request<Rq: RequestVariant>(&mut self, req: Rq) -> ClientResult<'_, Rq::Reply, Self> {
        // The inner client queues the request (and our inline syscall already answers it);
        // its future does nothing but poll, so it can be dropped and replaced by one that
        // polls through this handle.
        self.0.borrow_mut().request(req).map(|_future| ())?;
        Ok(FutureResult::new(self))
    }

    fn poll(&mut self) -> Poll<Result<Reply, Error>> {
        self.0.borrow_mut().poll()
    }

    fn interrupt(&self) -> Option<&'static InterruptFlag> {
        self.0.borrow().interrupt()
    }
}

impl<C: trussed_core::CryptoClient> trussed_core::CryptoClient for SharedClient<C> {}
impl<C: trussed_core::FilesystemClient> trussed_core::FilesystemClient for SharedClient<C> {}
impl<C: trussed_core::mechanisms::Tdes> trussed_core::mechanisms::Tdes for SharedClient<C> {}
impl<E: Extension, C: ExtensionClient<E>> ExtensionClient<E> for SharedClient<C> {
    fn id() -> u8 {
        C::id()
    }
}
