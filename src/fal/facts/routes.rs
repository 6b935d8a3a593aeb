//! The operations table's second half: the routes falgate answers itself ([`GateRoute`]), each
//! with the same questions a fal operation answers in [`super::OpKind::facts`] that apply to it
//! (access-line name, path, method, rate class, slot, drain, answer), in one `match` without a
//! wildcard arm.

use http::Method;

use super::{Answer, Drain, OpClass, SlotKind};

/// A route falgate answers itself: nothing reaches fal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GateRoute {
    /// `GET /api/fal/usage`: the caller's limits.
    Usage,
    /// `GET /api/fal/requests`: the caller's recent requests.
    Requests,
    /// `GET /api/fal/events`: the caller's request events (server-sent events).
    Events,
    /// `POST /api/fal/webhook`: fal's signed webhook deliveries (no JWT; `webhooks`).
    Webhook,
}

/// Everything that differs by gate route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    /// The access line's operation.
    pub name: &'static str,
    /// Its path.
    pub path: &'static str,
    /// The one method it answers.
    pub method: Method,
    /// The rate it spends (`None`: unauthenticated, ruled by its own checks).
    pub class: Option<OpClass>,
    /// The slot held while it is answered.
    pub slot: Option<SlotKind>,
    /// What the drain does to it.
    pub drain: Drain,
    /// How it answers.
    pub answer: Answer,
}

impl GateRoute {
    /// Every gate route.
    pub const ALL: &'static [Self] = &[Self::Usage, Self::Requests, Self::Events, Self::Webhook];

    /// The table's second half. No wildcard arm: a new route answers every question here.
    pub fn facts(self) -> RouteFacts {
        match self {
            Self::Usage => RouteFacts {
                name: "usage",
                path: "/api/fal/usage",
                method: Method::GET,
                class: Some(OpClass::Poll),
                slot: None,
                drain: Drain::Served,
                answer: Answer::Json,
            },
            Self::Requests => RouteFacts {
                name: "requests",
                path: "/api/fal/requests",
                method: Method::GET,
                class: Some(OpClass::Poll),
                slot: None,
                drain: Drain::Served,
                answer: Answer::Json,
            },
            Self::Events => RouteFacts {
                name: "events",
                path: "/api/fal/events",
                method: Method::GET,
                class: Some(OpClass::Poll),
                slot: Some(SlotKind::Stream),
                drain: Drain::Cut,
                answer: Answer::Stream,
            },
            // Refusals spend `limits.unauthenticated_ip_rate` per IP (the signature is the
            // credential: no caller, no caller's rate).
            Self::Webhook => RouteFacts {
                name: "webhook",
                path: "/api/fal/webhook",
                method: Method::POST,
                class: None,
                slot: None,
                drain: Drain::Served,
                answer: Answer::Json,
            },
        }
    }
}
