//! The HTTP API for an app's backend (docs/http-api.md): axum on a listener
//! of its own, so the hand-written WebSocket path keeps its memory per idle
//! connection. Off unless API keys are configured.
//!
//! Every request under `/v1` except the OpenAPI document carries
//! `Authorization: Bearer <key>`. Keys are compared as SHA-256 digests in
//! constant time, every configured key each time. Each key has its own
//! token bucket. Errors are JSON, `{"error": {"code", "message"}}`, with
//! the stable codes of [`Code`]. A request refused for any reason never
//! reaches the hub; the hub answers only reads (nothing is journaled).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use invitation_core::durable::Durable;
use invitation_core::protocol::{PushPlatform, PushRegistration};
use invitation_core::{CallId, CallView, DeviceId, Reason, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Authority;
use crate::hub::{HubMsg, RecordQuery};
use crate::rate::KeyedLimiter;
use crate::records::{Cursor, MAX_PAGE, StoredRecord};

/// The OpenAPI 3 description, kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Longest token lifetime `POST /v1/tokens` mints, seconds (30 days).
pub(crate) const MAX_TOKEN_TTL_S: u64 = 30 * 86_400;
/// Token lifetime when the request names none, seconds (1 hour).
pub(crate) const DEFAULT_TOKEN_TTL_S: u64 = 3600;
/// Records per page when the request names no limit.
pub(crate) const DEFAULT_PAGE: usize = 100;

/// The error codes, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 400: the request cannot be understood.
    BadRequest,
    /// 401: no key, or not a configured one.
    Unauthorized,
    /// 404: no such route or object.
    NotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 413: the body is over `api_max_body_bytes`.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: the key's rate is used up (`Retry-After` says for how long).
    RateLimited,
    /// 500: the server could not read what it keeps.
    Internal,
    /// 503: the hub is gone (the server is stopping or broken), or it
    /// sheds new calls (`Retry-After` says when to try again).
    Unavailable,
    /// A call command the switchboard refused, with the protocol's code
    /// (`invalid` 400, `forbidden` / `wrong_role` 403, `not_found` 404,
    /// `caller_busy` / `ended` and the rest 409, `unavailable` 503).
    Call(invitation_core::ErrorCode),
}

impl Code {
    fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Call(code) => match code.as_str() {
                "invalid" => StatusCode::BAD_REQUEST,
                "forbidden" | "wrong_role" => StatusCode::FORBIDDEN,
                "not_found" => StatusCode::NOT_FOUND,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            },
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Call(code) => code.as_str(),
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: Code,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn unavailable() -> Self {
        Self::new(Code::Unavailable, "the server is stopping")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"code": self.code.as_str(), "message": self.message}
        });
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// What the handlers share.
struct ApiState {
    hub: mpsc::Sender<HubMsg>,
    authority: Authority,
    /// SHA-256 of each configured key.
    keys: Vec<[u8; 32]>,
    /// One bucket per configured key (by index).
    limiter: Mutex<KeyedLimiter<usize>>,
    max_body: usize,
}

/// The API's settings, taken from the server's.
pub(crate) struct ApiSettings {
    pub(crate) keys: Vec<String>,
    pub(crate) rate: f64,
    pub(crate) burst: f64,
    pub(crate) max_body: usize,
}

/// The router: every route, its authentication and its errors.
pub(crate) fn router(
    settings: ApiSettings,
    authority: Authority,
    hub: mpsc::Sender<HubMsg>,
) -> Router {
    let state = Arc::new(ApiState {
        hub,
        authority,
        keys: settings
            .keys
            .iter()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect(),
        limiter: Mutex::new(KeyedLimiter::new(settings.rate, settings.burst)),
        max_body: settings.max_body,
    });
    let protected = Router::new()
        .route(TOKENS, post(mint_token))
        .route(PRESENCE, get(presence))
        .route(RECORDS, get(records))
        .route(CALL, get(call).delete(end_call))
        .route(CALLS, post(start_call))
        .route(PUSH_DEVICE, put(register_push).delete(unregister_push))
        .route(PUSH_DEVICES, get(push_devices))
        .route_layer(from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route(OPENAPI_PATH, get(openapi))
        .merge(protected)
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "this route does not take this method",
            )
        })
        .with_state(state)
}

/// Serves `router` on `listener` until `stop` completes (requests under
/// way finish first).
/// With `tls` (certificate and key, and the handshake timeout), HTTPS only.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<(crate::tls::ServerTls, Duration)>,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut listener = crate::api_conn::Bounded::new(
        listener,
        crate::api_conn::MAX_API_CONNECTIONS,
        crate::api_conn::MAX_API_CONNECTIONS_PER_IP,
        crate::api_conn::API_IDLE,
    );
    if let Some((tls, handshake)) = tls {
        listener = listener.with_tls(tls, handshake);
    }
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "the HTTP API stopped");
    }
}

/// The bound address, for the start-up log.
pub(crate) fn describe(addr: SocketAddr, keys: usize) {
    tracing::info!(%addr, keys, "HTTP API listening");
}

/// The key check and the per-key rate limit, before any handler runs.
async fn authorize(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthorized = || {
        ApiError::new(
            Code::Unauthorized,
            "send a configured API key as `Authorization: Bearer <key>`",
        )
    };
    let presented = presented.ok_or_else(unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Every key is compared, whichever matches: the time taken does not
    // depend on which one (or on how much of one) matched.
    let mut matched = None;
    for (i, key) in state.keys.iter().enumerate() {
        if bool::from(key.ct_eq(&digest)) {
            matched = Some(i);
        }
    }
    let index = matched.ok_or_else(unauthorized)?;
    let now = tokio::time::Instant::now().into_std();
    let checked = state
        .limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(&index, now);
    if let Err(wait) = checked {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = ApiError::new(
            Code::RateLimited,
            format!("this key's request rate is used up: retry in {secs} s"),
        );
        e.retry_after_s = Some(secs.max(1));
        return Err(e);
    }
    Ok(next.run(request).await)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.to_owned(),
    )
        .into_response()
}

/// Reads a JSON body: `application/json`, at most `max` bytes, only the
/// known fields.
async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "send the body as application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("the body is over {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // A body sent without a length stops being read at the limit.
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("the body: {e}")))
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    UserId::new(text).map_err(|e| ApiError::new(Code::BadRequest, format!("user id: {e}")))
}

/// Sends `msg` to the hub and waits for its answer.
async fn ask<T>(
    state: &ApiState,
    msg: impl FnOnce(oneshot::Sender<T>) -> HubMsg,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    state
        .hub
        .send(msg(reply))
        .await
        .map_err(|_| ApiError::unavailable())?;
    answer.await.map_err(|_| ApiError::unavailable())
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TokenAnswer {
    token: String,
    /// Unix seconds.
    expires_at: u64,
}

async fn mint_token(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<TokenAnswer>, ApiError> {
    let request: TokenRequest = json_body(&headers, body, state.max_body).await?;
    let user = user_id(&request.user)?;
    let ttl = request.ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl) {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("ttl_s: {ttl} is out of range: must be 1 to {MAX_TOKEN_TTL_S}"),
        ));
    }
    let name = request.name.unwrap_or_default();
    // The display-name rule of the protocol (a token whose name breaks it
    // would be refused at `hello`).
    let user = invitation_core::User::new(user, &name)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("name: {e}")))?;
    let (token, expires_at) =
        state
            .authority
            .mint_expiring(&user.id, &name, Duration::from_secs(ttl));
    Ok(axum::Json(TokenAnswer { token, expires_at }))
}

/// A user's presence, as the hub sees it now.
#[derive(Debug, Serialize, Deserialize)]
pub struct Presence {
    user: String,
    /// Connected devices.
    devices: Vec<String>,
    /// At least one connected device.
    online: bool,
    /// In an answered call (on some device).
    in_call: bool,
    /// Rung by a call that is still ringing for them.
    ringing: bool,
    /// Calling someone, the call not answered yet.
    calling: bool,
    /// The live calls they take part in.
    calls: Vec<String>,
}

impl Presence {
    pub(crate) fn of(sb: &Durable, user: &UserId) -> Self {
        let devices: Vec<String> = sb
            .online_devices(user)
            .iter()
            .map(ToString::to_string)
            .collect();
        let (mut in_call, mut ringing, mut calling) = (false, false, false);
        let mut calls = Vec::new();
        for id in sb.live_calls(user) {
            let Some(view) = sb.call(id) else { continue };
            if view.ended().is_some() {
                continue;
            }
            calls.push(id.to_string());
            if view.participants().iter().any(|(u, _)| u == user) && view.established() {
                in_call = true;
            }
            if view.caller().id == *user {
                calling |= !view.established() && view.is_ringing();
            } else if view.ring_deadline(user).is_some() {
                ringing = true;
            }
        }
        Self {
            user: user.to_string(),
            online: !devices.is_empty(),
            devices,
            in_call,
            ringing,
            calling,
            calls,
        }
    }
}

async fn presence(
    State(state): State<Arc<ApiState>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Presence>, ApiError> {
    let Path(user) = user.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let user = user_id(&user)?;
    let presence = ask(&state, |reply| HubMsg::Presence { user, reply }).await?;
    Ok(axum::Json(presence))
}

/// One callee of a live call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CalleeState {
    user: String,
    /// `ringing`, `in_call`, or the outcome (`accepted` once left, `declined`,
    /// `busy`, `timeout`, ...).
    state: String,
    /// The device that accepted or declined.
    device: Option<String>,
}

/// A live call, as the hub sees it now.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallState {
    call_id: String,
    caller: String,
    caller_device: String,
    #[serde(rename = "type")]
    call_type: invitation_core::CallType,
    /// `ringing`, `in_progress` or `ended`.
    state: std::borrow::Cow<'static, str>,
    /// Why the whole call ended, once it has.
    ended_reason: Option<Reason>,
    /// When the invitation was made (unix ns).
    invited_at: i64,
    /// Unix ns.
    ring_deadline: i64,
    /// When someone first accepted (unix ns), while the call goes on.
    answered_at: Option<i64>,
    callees: Vec<CalleeState>,
}

impl CallState {
    pub(crate) fn of(view: &CallView<'_>, unix_ns: impl Fn(std::time::Instant) -> i64) -> Self {
        let participants = view.participants();
        let callees = view
            .callees()
            .iter()
            .map(|c| {
                let in_call = participants.iter().any(|(u, _)| *u == c.id);
                let state = match view.outcome(&c.id) {
                    _ if in_call => "in_call".to_owned(),
                    None => "ringing".to_owned(),
                    Some(reason) => serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "failed".to_owned()),
                };
                CalleeState {
                    user: c.id.to_string(),
                    state,
                    device: view.answered_by(&c.id).map(ToString::to_string),
                }
            })
            .collect();
        let state = match view.ended() {
            Some(_) => "ended",
            None if view.established() => "in_progress",
            None => "ringing",
        };
        Self {
            call_id: view.call_id().to_string(),
            caller: view.caller().id.to_string(),
            caller_device: view.caller_device().to_string(),
            call_type: view.call_type(),
            state: state.into(),
            ended_reason: view.ended(),
            invited_at: unix_ns(view.invited_at()),
            ring_deadline: unix_ns(view.deadline()),
            answered_at: view.answered_at().map(&unix_ns),
            callees,
        }
    }
}

async fn call(
    State(state): State<Arc<ApiState>>,
    call_id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<CallState>, ApiError> {
    let Path(call_id) = call_id.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let call_id = CallId::new(&call_id)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("call id: {e}")))?;
    ask(&state, |reply| HubMsg::Call { call_id, reply })
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such live call"))
}

/// `POST /v1/calls`: a call the backend starts on behalf of `caller`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartCall {
    caller: String,
    /// The caller's display name, used if the server has never seen them.
    #[serde(default)]
    caller_name: Option<String>,
    callees: Vec<String>,
    call_type: invitation_core::CallType,
    #[serde(default)]
    timeout_s: Option<u32>,
    #[serde(default)]
    custom_data: Option<String>,
}

/// The answer to `POST /v1/calls`: the switchboard's `invited` result.
#[derive(Debug, Serialize)]
struct CallStarted {
    call_id: String,
    ring_remaining_ms: u64,
    callees: Vec<invitation_core::protocol::CalleeStatus>,
}

/// The idempotency key of a command: the `Idempotency-Key` header (a
/// request id), or a fresh random one.
fn idempotency_key(headers: &HeaderMap) -> Result<invitation_core::RequestId, ApiError> {
    match headers.get("idempotency-key") {
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ApiError::new(Code::BadRequest, "Idempotency-Key: not visible ASCII")
            })?;
            invitation_core::RequestId::new(format!("api-{text}"))
                .map_err(|e| ApiError::new(Code::BadRequest, format!("Idempotency-Key: {e}")))
        }
        None => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes)
                .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Ok(invitation_core::RequestId::new(format!("api-{hex}")).expect("a valid id"))
        }
    }
}

/// Runs a command for `user` through the hub; the switchboard's refusal
/// becomes a [`Code::Call`] error.
async fn backend_command(
    state: &ApiState,
    user: invitation_core::User,
    request: invitation_core::RequestId,
    command: invitation_core::protocol::Command,
) -> Result<invitation_core::protocol::ReplyResult, ApiError> {
    let answer = ask(state, |reply| HubMsg::Backend {
        user,
        request,
        command,
        reply,
    })
    .await?;
    answer.map_err(|e| {
        let mut err = ApiError::new(Code::Call(e.code()), e.to_string());
        if let invitation_core::CommandError::Unavailable { retry_after_ms } = e {
            err.retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1));
        }
        err
    })
}

async fn start_call(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<CallStarted>), ApiError> {
    let request: StartCall = json_body(&headers, body, state.max_body).await?;
    let key = idempotency_key(&headers)?;
    let caller = user_id(&request.caller)?;
    let caller = invitation_core::User::new(caller, request.caller_name.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(Code::BadRequest, format!("caller_name: {e}")))?;
    let callees = request
        .callees
        .iter()
        .map(|c| user_id(c))
        .collect::<Result<Vec<_>, _>>()?;
    let custom_data = request
        .custom_data
        .map(invitation_core::CustomData::new)
        .transpose()
        .map_err(|e| ApiError::new(Code::BadRequest, format!("custom_data: {e}")))?;
    let mut invite = invitation_core::protocol::InviteRequest::new(callees, request.call_type)
        .with_timeout_s(request.timeout_s);
    invite.custom_data = custom_data;
    let command = invitation_core::protocol::Command::Invite(invite);
    match backend_command(&state, caller, key, command).await? {
        invitation_core::protocol::ReplyResult::Invited {
            call_id,
            ring_remaining_ms,
            callees,
        } => Ok((
            StatusCode::CREATED,
            axum::Json(CallStarted {
                call_id: call_id.to_string(),
                ring_remaining_ms,
                callees,
            }),
        )),
        other => Err(ApiError::new(
            Code::Internal,
            format!("unexpected answer to an invite: {other:?}"),
        )),
    }
}

/// `DELETE /v1/calls/{call_id}`: ends the call as its caller (the caller
/// never changes, so reading it first is safe): cancels it while it rings,
/// ends it for everyone once answered.
async fn end_call(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    call_id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(call_id) = call_id.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let call_id = CallId::new(&call_id)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("call id: {e}")))?;
    let key = idempotency_key(&headers)?;
    let id = call_id.clone();
    let live = ask(&state, |reply| HubMsg::Call { call_id: id, reply })
        .await?
        .filter(|c| c.state != "ended")
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such live call"))?;
    let caller = invitation_core::User::new(user_id(&live.caller)?, "")
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    // `end` by the caller cancels a call that still rings (callees get
    // `canceled`) and ends an answered one, decided in the same turn as
    // it runs: the call's state read above cannot be stale for it.
    let command = invitation_core::protocol::Command::End { call_id };
    backend_command(&state, caller, key, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/users/{user}/devices/{device}/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    platform: PushPlatform,
    token: String,
}

/// One registered device, as `GET /v1/users/{user}/push` lists it.
#[derive(Debug, Serialize)]
struct PushDevice {
    device: String,
    platform: PushPlatform,
    token: String,
}

#[derive(Debug, Serialize)]
struct PushDevices {
    devices: Vec<PushDevice>,
}

fn user_and_device(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(UserId, DeviceId), ApiError> {
    let Path((user, device)) = path.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let device = DeviceId::new(&device)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("device id: {e}")))?;
    Ok((user_id(&user)?, device))
}

/// Registers (`Some`) or forgets a device's push credentials; answered
/// once the change is journaled.
async fn set_push(
    state: &ApiState,
    user: UserId,
    device: DeviceId,
    registration: Option<PushRegistration>,
) -> Result<StatusCode, ApiError> {
    let answer = ask(state, |reply| HubMsg::Push {
        user,
        device,
        registration,
        reply,
    })
    .await?;
    answer.map_err(|e| ApiError::new(Code::Call(e.code()), e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn register_push(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (user, device) = user_and_device(path)?;
    let body: PushBody = json_body(&headers, body, state.max_body).await?;
    let registration = PushRegistration::new(body.platform, body.token);
    // Refused here with the switchboard's own words, before the hub.
    registration.validate().map_err(|e| {
        ApiError::new(
            Code::Call(invitation_core::ErrorCode::Invalid),
            format!("invalid: {e}"),
        )
    })?;
    set_push(&state, user, device, Some(registration)).await
}

async fn unregister_push(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (user, device) = user_and_device(path)?;
    set_push(&state, user, device, None).await
}

async fn push_devices(
    State(state): State<Arc<ApiState>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<PushDevices>, ApiError> {
    let Path(user) = user.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let user = user_id(&user)?;
    let devices = ask(&state, |reply| HubMsg::PushDevices { user, reply }).await?;
    Ok(axum::Json(PushDevices {
        devices: devices
            .into_iter()
            .map(|(device, r)| PushDevice {
                device: device.to_string(),
                platform: r.platform,
                token: r.token,
            })
            .collect(),
    }))
}

/// `GET /v1/users/{user}/records` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsParams {
    from: Option<i64>,
    to: Option<i64>,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct RecordsAnswer {
    records: Vec<StoredRecord>,
    next_cursor: Option<String>,
}

async fn records(
    State(state): State<Arc<ApiState>>,
    user: Result<Path<String>, PathRejection>,
    params: Result<Query<RecordsParams>, QueryRejection>,
) -> Result<axum::Json<RecordsAnswer>, ApiError> {
    let Path(user) = user.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::new(Code::BadRequest, e.body_text()))?;
    let user = user_id(&user)?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("limit: {limit} is out of range: must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(str::parse::<Cursor>)
        .transpose()
        .map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))?;
    let query = RecordQuery {
        user,
        from: params.from.unwrap_or(i64::MIN),
        to: params.to.unwrap_or(i64::MAX),
        cursor,
        limit,
    };
    let page = ask(&state, |reply| HubMsg::Records { query, reply })
        .await?
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    Ok(axum::Json(RecordsAnswer {
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        records: page.records,
    }))
}

const OPENAPI_PATH: &str = "/v1/openapi.json";
const TOKENS: &str = "/v1/tokens";
const PRESENCE: &str = "/v1/users/{user}/presence";
const RECORDS: &str = "/v1/users/{user}/records";
const CALL: &str = "/v1/calls/{call_id}";
const CALLS: &str = "/v1/calls";
const PUSH_DEVICE: &str = "/v1/users/{user}/devices/{device}/push";
const PUSH_DEVICES: &str = "/v1/users/{user}/push";

/// The routes the router serves, as `(method, path)`, for the check that
/// the OpenAPI document lists exactly these.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", OPENAPI_PATH),
    ("post", TOKENS),
    ("get", PRESENCE),
    ("get", RECORDS),
    ("get", CALL),
    ("delete", CALL),
    ("post", CALLS),
    ("put", PUSH_DEVICE),
    ("delete", PUSH_DEVICE),
    ("get", PUSH_DEVICES),
];

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "unit-test-api-key-0123456789abcdef0123";

    /// The router on 127.0.0.1:0 in front of a hub inbox the test holds.
    async fn serve_on_inbox(
        rate: f64,
        burst: f64,
    ) -> (String, mpsc::Receiver<HubMsg>, oneshot::Sender<()>) {
        let (hub, inbox) = mpsc::channel(16);
        let router = router(
            ApiSettings {
                keys: vec![KEY.to_owned()],
                rate,
                burst,
                max_body: 1024,
            },
            Authority::new(b"0123456789abcdef0123", "invitation", None),
            hub,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, None, router, async move {
            let _ = stopped.await;
        }));
        (base, inbox, stop)
    }

    async fn status_and_code(req: reqwest::RequestBuilder) -> (u16, String) {
        let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
            .await
            .expect("answered in time")
            .expect("an answer");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Refused requests (no key, a wrong key, bad JSON, an unknown field, an
    /// oversized body, a bad id, an unknown route, past the rate) put
    /// nothing in the hub's inbox; an accepted one puts exactly its query
    /// there; with the hub gone the answer is 503 `unavailable`.
    #[tokio::test]
    async fn rejected_requests_never_reach_the_hub() {
        let (base, mut inbox, stop) = serve_on_inbox(0.001, 12.0).await;
        // reqwest is built without a crypto provider of its own.
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let presence = format!("{base}/v1/users/alice/presence");
        let tokens = format!("{base}/v1/tokens");
        let json_post = |body: &str| {
            client
                .post(&tokens)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body.to_owned())
        };
        let refused = [
            (client.get(&presence), 401, "unauthorized"),
            (
                client.get(&presence).bearer_auth("nope"),
                401,
                "unauthorized",
            ),
            (json_post("{"), 400, "bad_request"),
            (json_post(r#"{"user":"a","x":1}"#), 400, "bad_request"),
            (json_post(&"x".repeat(2048)), 413, "payload_too_large"),
            (
                client
                    .get(format!("{base}/v1/users/a%20b/presence"))
                    .bearer_auth(KEY),
                400,
                "bad_request",
            ),
            (
                client
                    .get(format!("{base}/v1/calls/a%20b"))
                    .bearer_auth(KEY),
                400,
                "bad_request",
            ),
            (
                client
                    .get(format!("{base}/v1/users/alice/records?limit=0"))
                    .bearer_auth(KEY),
                400,
                "bad_request",
            ),
            (
                client.get(format!("{base}/v1/x")).bearer_auth(KEY),
                404,
                "not_found",
            ),
        ];
        for (i, (req, status, code)) in refused.into_iter().enumerate() {
            assert_eq!(
                status_and_code(req).await,
                (status, code.to_owned()),
                "case {i}"
            );
            assert!(inbox.try_recv().is_err(), "case {i} reached the hub");
        }
        // Accepted: exactly one query reaches the hub; the test answers it.
        let answer = tokio::spawn({
            let req = client.get(&presence).bearer_auth(KEY);
            async move { status_and_code(req).await }
        });
        let msg = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("the query arrives")
            .expect("a message");
        let HubMsg::Presence { user, reply } = msg else {
            panic!("expected a presence query, got {msg:?}")
        };
        assert_eq!(user.as_str(), "alice");
        let empty = Presence {
            user: "alice".into(),
            devices: Vec::new(),
            online: false,
            in_call: false,
            ringing: false,
            calling: false,
            calls: Vec::new(),
        };
        reply.send(empty).unwrap();
        assert_eq!(answer.await.unwrap(), (200, String::new()));
        assert!(inbox.try_recv().is_err());
        // The bucket held 12: the 6 refusals with a valid key took one each,
        // the accepted request the 7th. With the hub gone, 5 more get 503,
        // then the bucket is empty: 429.
        drop(inbox);
        for _ in 0..5 {
            let got = status_and_code(client.get(&presence).bearer_auth(KEY)).await;
            assert_eq!(got, (503, "unavailable".to_owned()), "the hub is gone");
        }
        let got = status_and_code(client.get(&presence).bearer_auth(KEY)).await;
        assert_eq!(got, (429, "rate_limited".to_owned()));
        let _ = stop.send(());
    }

    /// The document in docs/openapi.json describes exactly the routes the
    /// router serves, and every error code.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .filter(|m| *m != "parameters")
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        let text = OPENAPI;
        for code in [
            Code::BadRequest,
            Code::Unauthorized,
            Code::NotFound,
            Code::MethodNotAllowed,
            Code::PayloadTooLarge,
            Code::UnsupportedMediaType,
            Code::RateLimited,
            Code::Internal,
            Code::Unavailable,
            Code::Call(invitation_core::ErrorCode::Invalid),
            Code::Call(invitation_core::ErrorCode::CallerBusy),
            Code::Call(invitation_core::ErrorCode::Forbidden),
        ] {
            assert!(
                text.contains(&format!("\"{}\"", code.as_str())),
                "{} is not documented",
                code.as_str()
            );
        }
    }
}
