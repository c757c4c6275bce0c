//! The URLs and their handlers. Every handler is a few lines over an engine call or a view;
//! who may reach it is decided by the extractors [`Instructor`] and [`LabAccess`], which call
//! [`super::tokens`], and nothing else does.
//!
//! Every secret URL starts `/t/TOKEN/`:
//! - `/t/TOKEN/` and `/t/TOKEN/events`: the class page and its live updates (instructor);
//! - `/t/TOKEN/lab/LAB/`, `events`, `graph.svg`, `term/GUEST` (websocket), and the actions
//!   `check`, `reset[?guest=GUEST]`, `capture/GUEST` (POST): one lab (its student, or the
//!   instructor).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;

use super::live::LabView;
use super::pages::{self, Audience, CaptureView, CheckView, ClassPage, GridRow, LabPage};

use super::tokens::Role;
use super::{Class, Slot};
use crate::explain;
use crate::host::dirwatch::DirWatch;
use crate::plan::{GuestPlan, Plan};
use crate::progress::Progress;
use crate::wire::{self, Only};

/// How long the server waits for a change in the state directory before it looks anyway
/// (a state directory removed and made anew is not seen by the watch on the old one).
const RESCAN_AT_LEAST: Duration = Duration::from_secs(60);

/// How soon the server looks again while a lab is being changed. The close that wakes it when
/// the holder lets go (or dies) comes a moment before the kernel drops the lock, so the
/// lock's end is looked for, not heard.
const WHILE_BUSY: Duration = Duration::from_millis(250);

/// Echo requests the Capture button sends.
const CAPTURE_PINGS: u32 = 3;

/// Largest websocket message a browser terminal may send (a paste).
const MAX_MESSAGE: usize = 64 * 1024;

/// Live-update streams one link may hold open on one page kind at once: a few tabs each, not
/// a thousand.
const EVENT_STREAMS: usize = 16;

type Shared = Arc<Class>;

/// Binds, announces, and serves until Ctrl-C or SIGTERM.
pub async fn run(class: Shared, announce: impl FnOnce(&str)) -> anyhow::Result<()> {
    class.rescan();
    let app = router(class.clone());
    let opts = class.options.clone();
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    // Labs that come up or go down are seen when their state changes: a watch on the state
    // directory wakes the rescan. The thread ends with the process.
    {
        let class = class.clone();
        let root = class.backend.state().root().to_path_buf();
        std::thread::spawn(move || {
            let _ = std::fs::create_dir_all(&root);
            let mut watch = DirWatch::new(&root);
            loop {
                let within = if class.watch.any_busy() {
                    WHILE_BUSY
                } else {
                    RESCAN_AT_LEAST
                };
                match watch.as_mut() {
                    Ok(w) => {
                        if let Err(e) = w.wait(within) {
                            eprintln!("vxlab serve: cannot watch {}: {e}", root.display());
                            watch = Err(e);
                        }
                    }
                    // Without a watch, the slow rescan is all there is.
                    Err(_) => std::thread::sleep(within),
                }
                class.rescan();
            }
        });
    }
    // Namespaces deleted or made by hand (or by a reset) are seen when it happens.
    {
        let class = class.clone();
        std::thread::spawn(move || follow_namespaces(&class));
    }
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let result = match &opts.tls {
        None => {
            let listener = tokio::net::TcpListener::bind(opts.listen).await?;
            let addr = listener.local_addr()?;
            announce(&format!(
                "{scheme}://{addr}/t/{}/",
                class.instructor_token()
            ));
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(anyhow::Error::from)
        }
        Some((cert, key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
            let listener = std::net::TcpListener::bind(opts.listen)?;
            let addr = listener.local_addr()?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            announce(&format!(
                "{scheme}://{addr}/t/{}/",
                class.instructor_token()
            ));
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    class.watch.stop_all();
    result
}

/// Tells the watchers which network namespaces went or came, as `/run/netns` changes. Until
/// there is a `/run/netns` (no namespace lab ran yet), it looks again once a minute.
fn follow_namespaces(class: &Class) {
    let dir = crate::host::netns::path("");
    // Each name with the namespace mounted on it, if one is yet (`ip netns add` makes the
    // file, then mounts): a name deleted and made anew between two looks is another
    // namespace under the same name.
    let names = || -> BTreeMap<String, Option<(u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let nsfs = std::fs::metadata("/proc/self/ns/net").map(|m| m.dev()).ok();
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = std::fs::metadata(e.path())
                    .ok()
                    .filter(|m| Some(m.dev()) == nsfs)
                    .map(|m| (m.dev(), m.ino()));
                Some((name, id))
            })
            .collect()
    };
    loop {
        let Ok(mut watch) = DirWatch::new(&dir) else {
            std::thread::sleep(RESCAN_AT_LEAST);
            continue;
        };
        let mut known = names();
        while watch.wait(RESCAN_AT_LEAST).is_ok() {
            let now = names();
            let (gone, came) = namespace_changes(&known, &now);
            if !gone.is_empty() || !came.is_empty() {
                class.watch.namespaces_changed(&gone, &came);
            }
            known = now;
        }
    }
}

/// The namespaces gone and come between two looks at `/run/netns`: by name, and a name whose
/// mounted namespace is another one (or none any more) counts as both.
fn namespace_changes(
    before: &BTreeMap<String, Option<(u64, u64)>>,
    now: &BTreeMap<String, Option<(u64, u64)>>,
) -> (Vec<String>, Vec<String>) {
    let replaced = |n: &String| match (before.get(n), now.get(n)) {
        (Some(Some(a)), Some(b)) => Some(*a) != *b,
        _ => false,
    };
    let gone = before
        .keys()
        .filter(|n| !now.contains_key(*n) || replaced(n))
        .cloned()
        .collect();
    let came = now
        .keys()
        .filter(|n| !before.contains_key(*n) || replaced(n))
        .cloned()
        .collect();
    (gone, came)
}

fn router(class: Shared) -> Router {
    Router::new()
        .route("/", get(front))
        .route("/static/{*file}", get(asset))
        .route("/t/{token}/", get(class_page))
        .route("/t/{token}/events", get(class_events))
        .route("/t/{token}", get(to_class_page))
        .route("/t/{token}/lab/{lab}", get(to_lab_page))
        .route("/t/{token}/lab/{lab}/", get(lab_page))
        .route("/t/{token}/lab/{lab}/events", get(lab_events))
        .route("/t/{token}/lab/{lab}/graph.svg", get(graph))
        .route("/t/{token}/lab/{lab}/term/{guest}", get(terminal))
        .route("/t/{token}/lab/{lab}/check", post(check))
        .route("/t/{token}/lab/{lab}/reset", post(reset))
        .route("/t/{token}/lab/{lab}/capture/{guest}", post(capture))
        .fallback(|| async { forbidden() })
        .layer(axum::middleware::from_fn_with_state(
            class.clone(),
            same_origin,
        ))
        .layer(axum::middleware::map_response(no_referrer))
        .with_state(class)
}

/// Whether a browser sent the request from another site: it names an `Origin` that is not
/// this server (its scheme, and the `Host` it was asked as). A request with no `Origin` is no
/// browser's cross-site request.
fn cross_origin(origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
    let Some(origin) = origin else {
        return false;
    };
    let scheme = if tls { "https://" } else { "http://" };
    match (origin.strip_prefix(scheme), host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

/// A secret link seen once (a screen, a history) must not let another site drive a lab: the
/// terminal's websocket and every POST (check, reset, capture) are refused when a browser
/// sends them from another origin.
async fn same_origin(
    State(class): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = req.headers();
    let changes =
        req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    let websocket = h
        .get(axum::http::header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    // HTTP/2 (which browsers speak over TLS) names the server in the request's authority,
    // not in a Host header.
    let host = text(axum::http::header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    if (changes || websocket)
        && cross_origin(
            text(axum::http::header::ORIGIN),
            host,
            class.options.tls.is_some(),
        )
    {
        return forbidden();
    }
    next.run(req).await
}

/// Secret links must not leak to other sites through the Referer header.
async fn no_referrer(mut r: Response) -> Response {
    r.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// 403 with no detail: the same for a wrong token, a lab of someone else and a lab that does
/// not exist, so nothing can be learnt by trying.
fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "forbidden\n").into_response()
}

/// A request with the instructor's token.
struct Instructor;

impl FromRequestParts<Shared> for Instructor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, class: &Shared) -> Result<Self, Response> {
        let params = params(parts, class).await?;
        match class
            .tokens()
            .role(params.get("token").map_or("", String::as_str))
        {
            Some(Role::Instructor) => Ok(Instructor),
            _ => Err(forbidden()),
        }
    }
}

/// A request for one lab by a token that may open it.
struct LabAccess {
    /// The token, for the terminal count.
    token: String,
    /// The lab's plan.
    plan: Arc<Plan>,
    /// The lab's live view.
    view: watch::Receiver<Arc<LabView>>,
    /// `/t/TOKEN/lab/LAB/`.
    base: String,
    /// The guest the URL names (`term/GUEST`, `capture/GUEST`), checked against the plan.
    guest: Option<GuestPlan>,
}

impl FromRequestParts<Shared> for LabAccess {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, class: &Shared) -> Result<Self, Response> {
        let params = params(parts, class).await?;
        let token = params.get("token").cloned().unwrap_or_default();
        let lab = params.get("lab").cloned().unwrap_or_default();
        let role = class.tokens().role(&token).ok_or_else(forbidden)?;
        if !role.may_open(&lab) {
            return Err(forbidden());
        }
        // Only a running lab has a view: a name from the URL reaches nothing else.
        let view = class.watch.view(&lab).ok_or_else(forbidden)?;
        let plan = view.borrow().plan.clone();
        let guest = match params.get("guest") {
            Some(name) => Some(plan.guest(name).cloned().ok_or_else(forbidden)?),
            None => None,
        };
        Ok(LabAccess {
            base: format!("/t/{token}/lab/{lab}/"),
            token,
            plan,
            view,
            guest,
        })
    }
}

async fn params(parts: &mut Parts, class: &Shared) -> Result<HashMap<String, String>, Response> {
    Path::<HashMap<String, String>>::from_request_parts(parts, class)
        .await
        .map(|Path(p)| p)
        .map_err(|_| forbidden())
}

async fn front() -> Html<&'static str> {
    Html("<!doctype html><title>vxlab</title><p>vxlab class server: open the link you were given.</p>")
}

/// The pages' own files and xterm.js, built into the binary.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "vxlab.css" => (
            include_bytes!("../../templates/web/static/vxlab.css"),
            "text/css",
        ),
        "vxlab.js" => (
            include_bytes!("../../templates/web/static/vxlab.js"),
            "text/javascript",
        ),
        "xterm/xterm.css" => (
            include_bytes!("../../templates/web/vendor/xterm/xterm.css"),
            "text/css",
        ),
        "xterm/xterm.js" => (
            include_bytes!("../../templates/web/vendor/xterm/xterm.js"),
            "text/javascript",
        ),
        "xterm/addon-fit.js" => (
            include_bytes!("../../templates/web/vendor/xterm/addon-fit.js"),
            "text/javascript",
        ),
        // The licences of what is served, beside it (linked from the student's page).
        "xterm/LICENSE" => (
            include_bytes!("../../templates/web/vendor/xterm/LICENSE"),
            "text/plain; charset=utf-8",
        ),
        "xterm/LICENSE-addon-fit" => (
            include_bytes!("../../templates/web/vendor/xterm/LICENSE-addon-fit"),
            "text/plain; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn grid(class: &Class) -> Vec<GridRow> {
    let tokens = class.tokens();
    class
        .watch
        .labs()
        .iter()
        .filter_map(|lab| {
            let view = class.watch.view(lab)?;
            let v = view.borrow().clone();
            // The student's own link, as the sheet gives it: the instructor's would open every
            // lab to whoever it is passed on to.
            // (A lab whose token cannot be read yet keeps its row, with the instructor's own.)
            let student = tokens
                .lab(lab)
                .map_or_else(|| format!("lab/{lab}/"), |t| format!("/t/{t}/lab/{lab}/"));
            Some(GridRow::of(lab, &v, student))
        })
        .collect()
}

async fn class_page(
    _: Instructor,
    State(class): State<Shared>,
    Path(p): Path<HashMap<String, String>>,
) -> Html<String> {
    let base = format!("/t/{}/", p.get("token").map_or("", String::as_str));
    Html(pages::render(
        "class.html",
        &ClassPage {
            base,
            rows: grid(&class),
        },
    ))
}

async fn class_events(
    _: Instructor,
    State(class): State<Shared>,
    Path(p): Path<HashMap<String, String>>,
) -> Response {
    let token = p.get("token").map_or("", String::as_str);
    let Some(slot) = Slot::take(&class, token, "events class", EVENT_STREAMS) else {
        return too_many_streams();
    };
    let mut changes = class.watch.changes();
    changes.mark_changed();
    let stream = stream::unfold(
        (class, changes, slot),
        |(class, mut changes, slot)| async move {
            changes.changed().await.ok()?;
            let html = pages::render("grid.html", &serde_json::json!({ "rows": grid(&class) }));
            let event = Event::default()
                .event("grid")
                .data(serde_json::json!({ "html": html }).to_string());
            Some((Ok::<_, Infallible>(event), (class, changes, slot)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn too_many_streams() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        "too many pages of this link are open: close some\n",
    )
        .into_response()
}

/// A link typed without its last `/`: to the page, once the token may open it.
async fn to_lab_page(access: LabAccess) -> Redirect {
    Redirect::permanent(&access.base)
}

/// The same for the instructor's page.
async fn to_class_page(_: Instructor, Path(p): Path<HashMap<String, String>>) -> Redirect {
    // The token was just matched against the instructor's: hex digits only.
    Redirect::permanent(&format!(
        "/t/{}/",
        p.get("token").map_or("", String::as_str)
    ))
}

async fn lab_page(access: LabAccess, State(class): State<Shared>) -> Html<String> {
    let view = access.view.borrow().clone();
    Html(pages::render(
        "lab.html",
        &LabPage::of(
            access.base,
            &access.plan,
            &view,
            class.options.terminals_per_token,
        ),
    ))
}

async fn lab_events(access: LabAccess, State(class): State<Shared>) -> Response {
    let what = format!("events {}", access.plan.lab);
    let Some(slot) = Slot::take(&class, &access.token, &what, EVENT_STREAMS) else {
        return too_many_streams();
    };
    let mut view = access.view;
    view.mark_changed();
    let sent: HashMap<String, String> = HashMap::new();
    // The last state says whether the lab is gone: the page is told once, and the stream ends.
    let stream = stream::unfold(
        (view, sent, slot, false),
        |(mut view, mut sent, slot, gone)| async move {
            if gone {
                return None;
            }
            if view.changed().await.is_err() {
                // This run of the lab is over: taken down, or brought up again.
                let event = Event::default().event("gone").data("{}");
                let events: Vec<Result<Event, Infallible>> = vec![Ok(event)];
                return Some((stream::iter(events), (view, sent, slot, true)));
            }
            let v = view.borrow_and_update().clone();
            let mut events = Vec::new();
            for g in &v.plan.guests {
                let html = pages::guest_tables(&v, &g.name);
                if sent.get(&g.name) != Some(&html) {
                    events.push(Ok(Event::default().event("guest").data(
                        serde_json::json!({ "guest": g.name, "html": html }).to_string(),
                    )));
                    sent.insert(g.name.clone(), html);
                }
            }
            let health = pages::page_health_line(&v);
            events.push(Ok(Event::default()
                .event("health")
                .data(serde_json::json!({ "health": health }).to_string())));
            Some((stream::iter(events), (view, sent, slot, false)))
        },
    )
    .flatten();
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn graph(access: LabAccess, State(class): State<Shared>) -> Response {
    let plan = access.plan.clone();
    let backend = class.backend.clone();
    match tokio::task::spawn_blocking(move || backend.graph_svg(&plan)).await {
        Ok(Ok(svg)) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot draw the graph: {e:#}\n"),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Runs `job` with an engine for the lab on a thread that may block.
async fn with_engine<T: Send + 'static>(
    class: &Class,
    lab: &str,
    job: impl FnOnce(crate::engine::Engine) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let backend = class.backend.clone();
    let turn = class.action_lock(lab);
    let _turn = turn.lock().await;
    let lab = lab.to_string();
    tokio::task::spawn_blocking(move || job(backend.engine(&lab)?))
        .await
        .map_err(|e| anyhow::anyhow!("the job stopped: {e}"))?
}

/// Which page asked: `?from=grid` is the instructor's grid; anything else a lab's page.
#[derive(Deserialize)]
struct Asker {
    from: Option<String>,
}

impl Asker {
    fn audience<'a>(&self, lab: &'a str) -> Audience<'a> {
        match self.from.as_deref() {
            Some("grid") => Audience::Grid { lab },
            _ => Audience::LabPage,
        }
    }
}

async fn check(
    access: LabAccess,
    State(class): State<Shared>,
    Query(from): Query<Asker>,
) -> Html<String> {
    let plan = access.plan.clone();
    let lab = plan.lab.clone();
    let p = plan.clone();
    let view = match with_engine(&class, &lab, move |e| Ok(e.check(&p)?)).await {
        Ok(outcome) => {
            class
                .watch
                .checked(&lab, outcome.verdict.clone(), outcome.host);
            CheckView::of(&outcome.verdict, from.audience(&lab))
        }
        Err(e) => CheckView::failed_to_run(format!("{e:#}")),
    };
    Html(pages::render("check.html", &view))
}

#[derive(Deserialize)]
struct ResetQuery {
    guest: Option<String>,
    from: Option<String>,
}

async fn reset(
    access: LabAccess,
    State(class): State<Shared>,
    Query(q): Query<ResetQuery>,
) -> Response {
    let plan = access.plan.clone();
    let guest = match q.guest {
        Some(name) if plan.guest(&name).is_none() => return forbidden(),
        other => other,
    };
    let lab = plan.lab.clone();
    let p = plan.clone();
    let g = guest.clone();
    let result = with_engine(&class, &lab, move |e| {
        Ok(e.reset(&p, g.as_deref(), &Progress::hidden())?)
    })
    .await;
    class.watch.refresh(&lab);
    let done = result.is_ok();
    let mut view = match result {
        Ok(outcome) => {
            class
                .watch
                .checked(&lab, outcome.verdict.clone(), outcome.host);
            let from = Asker { from: q.from };
            let mut view = CheckView::of(&outcome.verdict, from.audience(&lab));
            view.ran = pages::RanView::all(&outcome.repairs);
            view
        }
        Err(e) => CheckView::failed_to_run(format!("{e:#}")),
    };
    // Said only of a reset that ran.
    view.heading = Some(match (&guest, done) {
        (Some(g), true) => {
            format!("{g} was reset to the lab's plan, and what it learned forgotten.")
        }
        (None, true) => {
            format!("Lab {lab} was reset to its plan, and what its guests learned forgotten.")
        }
        (Some(g), false) => format!("{g} was not reset."),
        (None, false) => format!("Lab {lab} was not reset."),
    });
    Html(pages::render("check.html", &view)).into_response()
}

#[derive(Deserialize)]
struct CaptureQuery {
    to: Option<String>,
}

async fn capture(
    access: LabAccess,
    State(class): State<Shared>,
    Query(q): Query<CaptureQuery>,
) -> Response {
    let plan = access.plan.clone();
    let Some(g) = access.guest else {
        return forbidden();
    };
    // Only what the page offers: an address of the lab's own overlays.
    let to = match q.to.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<std::net::IpAddr>() {
            Ok(a) if wire::targets(&plan, &g).iter().any(|(t, _)| *t == a) => Some(a),
            _ => return forbidden(),
        },
    };
    let target = match wire::target(&plan, &g, to) {
        Ok(t) => (
            t.vtep.clone(),
            t.to,
            t.elsewhere.clone(),
            t.via().map(str::to_owned),
        ),
        Err(why) => {
            return Html(pages::render(
                "capture.html",
                &CaptureView::failed(&g.name, why),
            ))
            .into_response()
        }
    };
    let (vtep, to, elsewhere, via) = target;
    let lab = plan.lab.clone();
    let (p, guest) = (plan.clone(), g.clone());
    let result = with_engine(&class, &lab, move |e| {
        Ok(e.capture(&p, &guest, (to, via.as_deref()), CAPTURE_PINGS, false)?)
    })
    .await;
    let view = match result {
        Ok(c) => {
            // The same decoding, filter and summary as `vxlab capture`.
            let all = wire::decode_all(&c.frames, vtep.port);
            let pinged = wire::Pinged {
                guest: &g,
                vtep: &vtep,
                to,
                answered: c.answered,
                kept: false,
                elsewhere,
                watched: wire::watched(&plan, c.watched.as_ref(), vtep.port),
            };
            let summary = wire::summarize(&pinged, &all, &explain::owners(&plan));
            CaptureView {
                guest: g.name.clone(),
                to: to.to_string(),
                answered: c.answered,
                lines: wire::shown(&all, Only::Lesson)
                    .iter()
                    .enumerate()
                    .map(|(i, (t, w))| format!("{:>3} {t:>8.3}s  {}", i + 1, w.summary()))
                    .collect(),
                story: summary.text,
                forgot: c
                    .forgot
                    .iter()
                    .map(|(who, s)| format!("{who}: {}", s.command))
                    .collect(),
                hidden: wire::hidden(&all, Only::Lesson)
                    .iter()
                    .map(|(kind, n)| format!("{kind} x{n}"))
                    .collect(),
                error: None,
            }
        }
        Err(e) => CaptureView::failed(&g.name, format!("{e:#}")),
    };
    Html(pages::render("capture.html", &view)).into_response()
}

async fn terminal(
    access: LabAccess,
    State(class): State<Shared>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(g) = access.guest else {
        return forbidden();
    };
    let lab = access.plan.lab.clone();
    // The terminal lives as long as this run of the lab: it follows the lab's view, which
    // ends when the lab goes down or is brought up again.
    let Some(view) = class.watch.view(&lab) else {
        return forbidden();
    };
    let slot = Slot::take(
        &class,
        &access.token,
        &format!("terminals {lab}"),
        class.options.terminals_per_token,
    );
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| super::terminal::run(class, socket, view, g, slot))
}

#[cfg(test)]
mod tests {
    use super::{cross_origin, namespace_changes};
    use std::collections::BTreeMap;

    #[test]
    fn a_namespace_made_anew_under_its_name_is_gone_and_come_and_mounting_is_neither() {
        let look = |v: &[(&str, Option<(u64, u64)>)]| -> BTreeMap<String, Option<(u64, u64)>> {
            v.iter().map(|(n, id)| (n.to_string(), *id)).collect()
        };
        let before = look(&[("a", Some((4, 10))), ("b", Some((4, 11))), ("c", None)]);
        // a deleted and made anew, b deleted, c mounted at last, d new.
        let now = look(&[("a", Some((4, 12))), ("c", Some((4, 13))), ("d", None)]);
        let (gone, came) = namespace_changes(&before, &now);
        assert_eq!(gone, ["a", "b"]);
        assert_eq!(came, ["a", "d"]);
        // Deleted and its file made again, not mounted yet: the old one is gone.
        let (gone, came) = namespace_changes(&before, &look(&[("a", None)]));
        assert_eq!(
            (gone, came),
            (vec!["a".into(), "b".into(), "c".into()], vec!["a".into()])
        );
        let (gone, came) = namespace_changes(&before, &before);
        assert!(gone.is_empty() && came.is_empty());
    }

    #[test]
    fn only_another_sites_origin_is_cross_origin() {
        let host = Some("10.0.0.5:8080");
        assert!(!cross_origin(None, host, false), "curl sends no Origin");
        assert!(!cross_origin(Some("http://10.0.0.5:8080"), host, false));
        assert!(!cross_origin(Some("https://10.0.0.5:8080"), host, true));
        assert!(
            cross_origin(Some("https://10.0.0.5:8080"), host, false),
            "another scheme is another origin"
        );
        assert!(cross_origin(Some("http://10.0.0.5:8080"), host, true));
        assert!(cross_origin(Some("http://evil.example"), host, false));
        assert!(cross_origin(Some("http://10.0.0.5:8081"), host, false));
        assert!(cross_origin(Some("null"), host, false), "a sandboxed page");
        assert!(cross_origin(Some("http://10.0.0.5:8080"), None, false));
    }
}
