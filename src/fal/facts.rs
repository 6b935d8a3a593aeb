//! The one table of what each operation is: every fact that differs by operation (its HTTP form,
//! its limit class, its price, the endpoint rates, the retention header the tier rules, its slot,
//! what the drain does to it, what fal's answer means for the limits) answered in one exhaustive
//! `match` ([`OpKind::facts`], no wildcard arm). The policy, the pipeline, the limits and the
//! forwarded headers read these facts instead of matching on operations themselves, so a new
//! operation cannot compile until every question below is answered for it.
//!
//! | op | class | price | endpoint rates | retention header | slot | drain | outcome unknown | job | answer |
//! | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
//! | submit (idempotent) | submit | endpoint | yes | `-preference` | — | 424 | keep | starts (reconciled) | control |
//! | status | poll | — | no | — | — | served | — | may end | control |
//! | status stream | poll | — | no | — | stream | cut | — | — | stream |
//! | result | poll | — | no | — | relay | served | — | may end | output |
//! | cancel | cancel | — | no | — | — | served | — | may end | control |
//! | run | submit | endpoint | yes | `-preference` | relay | 424 | keep | runs | output |
//! | run stream | submit | endpoint | yes | `-preference` | stream | 424 | keep | runs | stream when taken |
//! | upload initiate | upload | free | no | `x-fal-object-lifecycle` | — | 424 | refund | — | control |
//! | client token | token | `client_token_cost` | no | — | — | 424 | refund | — | JSON |
//!
//! The relay (`upstream/relay.rs`) reads the answer column too: whether fal's answer is streamed,
//! its size cap, what a 2xx must hold, and how a stream ends at its lifetime.
//!
//! The routes falgate answers itself, without calling fal, are the same table's second half
//! ([`GateRoute::facts`], no wildcard arm either): their access-line name, method, the rate class
//! they spend, the slot they hold, what the drain does to them, and what they answer.
//!
//! | route | method | class | slot | drain | answer |
//! | --- | --- | --- | --- | --- | --- |
//! | `/api/fal/usage` | GET | poll | — | served | JSON |
//! | `/api/fal/requests` | GET | poll | — | served | JSON |
//! | `/api/fal/events` | GET | poll | stream | cut | stream (its own events, ended cleanly at the lifetime) |
//! | `/api/fal/webhook` | POST | — (refusals: the unauthenticated IP rate) | — | served | JSON |

use http::Method;

use super::{Host, Op};

mod routes;
pub use routes::{GateRoute, RouteFacts};

// The operation vocabulary the rest of the gate speaks (tier `operations` in `config`, limit
// classes and slots in `limits`) is defined here, below both, and re-exported there: the
// table names them without importing upward (ARCHITECTURE.md, "Dependency direction").

/// One kind of call a tier may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Submit,
    Status,
    Stream,
    Result,
    Cancel,
    Run,
    Upload,
    /// Minting a temporary fal token (`fal.realtime`).
    Token,
}

/// Which budget a call spends. Submits (queue, sync and streaming runs), uploads and client
/// tokens are paid: they count against the day quota. Polls (status, stream, result) and cancels
/// only have rates. Each operation's class is in the operations table (`fal::OpFacts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    Submit = 0,
    Poll = 1,
    Cancel = 2,
    Upload = 3,
    /// A temporary fal token for `fal.realtime` / client-mode streams (`routes::tokens`).
    Token = 4,
}

/// What a slot holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// A relayed status event stream.
    Stream = 0,
    /// A buffered answer (result, sync run) being read from fal and relayed.
    Relay = 1,
}

/// Every operation, without its parameters: what the table is keyed by.
macro_rules! op_kinds {
    ($($(#[$doc:meta])* $kind:ident),+ $(,)?) => {
        /// An [`Op`] without its parameters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind {
            $($(#[$doc])* $kind),+
        }

        impl OpKind {
            /// Every operation (built from the same list as the enum, so never missing one).
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),+];
        }
    };
}

op_kinds! {
    Submit,
    Status,
    StatusStream,
    Result,
    Cancel,
    Run,
    RunStream,
    StorageInitiate,
    ClientToken,
}

/// What credits a call spends (on top of one daily request, for a paid [`OpClass`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Price {
    /// `[limits.credits]` of the endpoint called (the longest key covering its path), by the
    /// input with the schema's defaults applied.
    Endpoint,
    /// `[limits.credits] client_token_cost`.
    ClientToken,
    /// No credits.
    Free,
}

/// The lifecycle header fal reads on this operation: the one a tier's forced `object_lifecycle`
/// replaces the caller's with, and the one `max_object_expiration_seconds` sets when the caller
/// sent none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// `x-fal-object-lifecycle-preference`: the objects a submit or run makes.
    Preference,
    /// `x-fal-object-lifecycle`: the object an upload makes.
    Object,
    /// The call makes no object.
    None,
}

/// What the drain does to a call still waiting for fal when it abandons waits (just before the
/// drain timeout cuts connections). Once fal answered, an answer being relayed (a run's event
/// stream included) is cut with its connection at the drain timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Answered 424 `submit_outcome_unknown` at once, never cut: a cut call would be retried by
    /// the client or the balancer, a second paid call.
    AnswerUnknown,
    /// Served like any call (a quick control call); if still waiting at the drain timeout its
    /// connection is cut, which is safe: retrying it changes nothing at fal.
    Served,
    /// A stream relayed until the drain timeout cuts it; the client reconnects elsewhere.
    Cut,
}

/// What a call whose outcome is unknown (fal broke off or the drain abandoned it) does to the
/// spend of its admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// fal may run it: answered 424 `submit_outcome_unknown` and the spend (and in-flight
    /// reservation) is kept, rather than invite a second paid job.
    KeepSpend,
    /// Nothing fal made can reach anyone (the token or upload URL was never delivered): the
    /// spend is refunded.
    Refund,
    /// Not paid: nothing to keep or refund.
    NotPaid,
}

/// What the call means for the caller's jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Starts a queue job: its ownership is recorded and it holds an in-flight reservation,
    /// tracked by the reconciler (`limits/reconcile.rs`) until it ends.
    Starts,
    /// Holds an in-flight reservation while it runs, freed once fal answered or the client went
    /// away (a drop guard); it keeps its spend.
    Runs,
    /// fal's answer may show a queue job's end (status `COMPLETED`, result served, cancel
    /// `ALREADY_COMPLETED`), which frees its reservation.
    MayEnd,
    /// Nothing.
    None,
}

/// How fal's answer is relayed: streamed or read whole, how large it may be, what a 2xx must
/// hold, and how a stream ends at its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// fal's control JSON, read whole (`upstream.max_response_bytes`): a 2xx must be JSON with
    /// fal's fields (a submit's must name a request id); a refusal's fields are read, never
    /// required (a cancel's `ALREADY_COMPLETED`).
    Control,
    /// Model output, read whole (`upstream.max_result_bytes`), relayed as it comes once the
    /// buffer budget is out; a 2xx is checked to be JSON when it says it is.
    Output,
    /// A JSON value read whole (`upstream.max_response_bytes`; a temporary token is a string),
    /// only checked to be JSON.
    Json,
    /// An event stream relayed as it arrives, ended cleanly at its lifetime.
    Stream,
    /// Relayed as it arrives when fal took the call (a 2xx), else read like [`Answer::Control`];
    /// broken off (not ended) at its lifetime, so a partial output never looks final.
    StreamWhenTaken,
}

/// Everything that differs by operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpFacts {
    /// A bounded label for logs and metrics.
    pub name: &'static str,
    /// The HTTP method fal expects.
    pub method: Method,
    /// The fal host it goes to.
    pub host: Host,
    /// Whether it carries a JSON body that is read and checked (schema, or a strict object).
    pub body: bool,
    /// The name a tier's `operations` list allows it by.
    pub operation: Operation,
    /// The limit class: which tier rate applies, and whether it is paid (day quota).
    pub class: OpClass,
    /// Its credit price.
    pub price: Price,
    /// Whether `[limits.endpoint_rates]` of the endpoint called apply.
    pub endpoint_rates: bool,
    /// The lifecycle header the tier's retention rules write.
    pub retention: Retention,
    /// The slot held while its answer is relayed.
    pub slot: Option<SlotKind>,
    /// What the drain does to it.
    pub drain: Drain,
    /// What an unknown outcome does to its spend.
    pub unknown: Unknown,
    /// What it means for the caller's jobs (and the reconciler).
    pub job: Job,
    /// How fal's answer is relayed.
    pub answer: Answer,
    /// Whether an `Idempotency-Key` replays the first answer (else the header is ignored).
    pub idempotent: bool,
}

impl OpFacts {
    /// Whether the call is priced by, or rated on, the endpoint it calls.
    pub fn calls_endpoint(&self) -> bool {
        self.price == Price::Endpoint || self.endpoint_rates
    }

    /// Whether the reconciler tracks the job it starts.
    pub fn reconciled(&self) -> bool {
        self.job == Job::Starts
    }
}

impl OpKind {
    /// The table. No wildcard arm: a new operation answers every question here.
    pub fn facts(self) -> OpFacts {
        use Method as M;
        match self {
            Self::Submit => OpFacts {
                name: "submit",
                method: M::POST,
                host: Host::Queue,
                body: true,
                operation: Operation::Submit,
                class: OpClass::Submit,
                price: Price::Endpoint,
                endpoint_rates: true,
                retention: Retention::Preference,
                slot: None,
                drain: Drain::AnswerUnknown,
                unknown: Unknown::KeepSpend,
                job: Job::Starts,
                answer: Answer::Control,
                idempotent: true,
            },
            Self::Status => OpFacts {
                name: "status",
                method: M::GET,
                host: Host::Queue,
                body: false,
                operation: Operation::Status,
                class: OpClass::Poll,
                price: Price::Free,
                endpoint_rates: false,
                retention: Retention::None,
                slot: None,
                drain: Drain::Served,
                unknown: Unknown::NotPaid,
                job: Job::MayEnd,
                answer: Answer::Control,
                idempotent: false,
            },
            Self::StatusStream => OpFacts {
                name: "status_stream",
                method: M::GET,
                host: Host::Queue,
                body: false,
                operation: Operation::Stream,
                class: OpClass::Poll,
                price: Price::Free,
                endpoint_rates: false,
                retention: Retention::None,
                slot: Some(SlotKind::Stream),
                drain: Drain::Cut,
                unknown: Unknown::NotPaid,
                job: Job::None,
                answer: Answer::Stream,
                idempotent: false,
            },
            Self::Result => OpFacts {
                name: "result",
                method: M::GET,
                host: Host::Queue,
                body: false,
                operation: Operation::Result,
                class: OpClass::Poll,
                price: Price::Free,
                endpoint_rates: false,
                retention: Retention::None,
                slot: Some(SlotKind::Relay),
                drain: Drain::Served,
                unknown: Unknown::NotPaid,
                job: Job::MayEnd,
                answer: Answer::Output,
                idempotent: false,
            },
            Self::Cancel => OpFacts {
                name: "cancel",
                method: M::PUT,
                host: Host::Queue,
                body: false,
                operation: Operation::Cancel,
                class: OpClass::Cancel,
                price: Price::Free,
                endpoint_rates: false,
                retention: Retention::None,
                slot: None,
                drain: Drain::Served,
                unknown: Unknown::NotPaid,
                job: Job::MayEnd,
                answer: Answer::Control,
                idempotent: false,
            },
            Self::Run => OpFacts {
                name: "run",
                method: M::POST,
                host: Host::Run,
                body: true,
                operation: Operation::Run,
                class: OpClass::Submit,
                price: Price::Endpoint,
                endpoint_rates: true,
                retention: Retention::Preference,
                slot: Some(SlotKind::Relay),
                drain: Drain::AnswerUnknown,
                unknown: Unknown::KeepSpend,
                job: Job::Runs,
                answer: Answer::Output,
                idempotent: false,
            },
            // A sync run answered as an event stream: the same rules as a run, a stream slot.
            Self::RunStream => OpFacts {
                name: "run_stream",
                method: M::POST,
                host: Host::Run,
                body: true,
                operation: Operation::Run,
                class: OpClass::Submit,
                price: Price::Endpoint,
                endpoint_rates: true,
                retention: Retention::Preference,
                slot: Some(SlotKind::Stream),
                drain: Drain::AnswerUnknown,
                unknown: Unknown::KeepSpend,
                job: Job::Runs,
                answer: Answer::StreamWhenTaken,
                idempotent: false,
            },
            Self::StorageInitiate => OpFacts {
                name: "storage_initiate",
                method: M::POST,
                host: Host::Storage,
                body: true,
                operation: Operation::Upload,
                class: OpClass::Upload,
                price: Price::Free,
                endpoint_rates: false,
                retention: Retention::Object,
                slot: None,
                drain: Drain::AnswerUnknown,
                unknown: Unknown::Refund,
                job: Job::None,
                answer: Answer::Control,
                idempotent: false,
            },
            Self::ClientToken => OpFacts {
                name: "token",
                method: M::POST,
                host: Host::Storage,
                body: true,
                operation: Operation::Token,
                class: OpClass::Token,
                price: Price::ClientToken,
                endpoint_rates: false,
                retention: Retention::None,
                slot: None,
                drain: Drain::AnswerUnknown,
                unknown: Unknown::Refund,
                job: Job::None,
                answer: Answer::Json,
                idempotent: false,
            },
        }
    }
}

impl Op {
    /// Which operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Self::Submit { .. } => OpKind::Submit,
            Self::Status { .. } => OpKind::Status,
            Self::StatusStream { .. } => OpKind::StatusStream,
            Self::Result { .. } => OpKind::Result,
            Self::Cancel { .. } => OpKind::Cancel,
            Self::Run { .. } => OpKind::Run,
            Self::RunStream { .. } => OpKind::RunStream,
            Self::StorageInitiate { .. } => OpKind::StorageInitiate,
            Self::ClientToken { .. } => OpKind::ClientToken,
        }
    }

    /// Its row of the table.
    pub fn facts(&self) -> OpFacts {
        self.kind().facts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_and_names_are_unique() {
        let mut names: Vec<_> = OpKind::ALL.iter().map(|kind| kind.facts().name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OpKind::ALL.len());
    }

    #[test]
    fn paid_calls_are_never_cut_by_the_drain_and_only_bodies_are_paid() {
        for kind in OpKind::ALL {
            let facts = kind.facts();
            let paid = matches!(facts.class, OpClass::Submit | OpClass::Upload | OpClass::Token);
            assert_eq!(paid, facts.drain == Drain::AnswerUnknown, "{kind:?}");
            assert_eq!(paid, facts.unknown != Unknown::NotPaid, "{kind:?}");
            assert_eq!(paid, facts.body, "{kind:?}");
            assert_eq!(facts.body, facts.method == Method::POST, "{kind:?}");
            assert!(facts.price == Price::Free || paid, "{kind:?}");
            assert!(!facts.endpoint_rates || facts.price == Price::Endpoint, "{kind:?}");
        }
    }

    #[test]
    fn gate_routes_have_unique_names_apart_from_the_operations_and_streams_hold_a_slot() {
        let mut names: Vec<_> = OpKind::ALL.iter().map(|kind| kind.facts().name).collect();
        names.extend(GateRoute::ALL.iter().map(|route| route.facts().name));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for route in GateRoute::ALL {
            let facts = route.facts();
            assert!(facts.path.starts_with("/api/fal/"), "{route:?}");
            assert_eq!(
                facts.answer == Answer::Stream,
                facts.slot == Some(SlotKind::Stream),
                "{route:?}"
            );
            assert_eq!(facts.answer == Answer::Stream, facts.drain == Drain::Cut, "{route:?}");
        }
    }

    #[test]
    fn a_streaming_run_is_ruled_exactly_like_a_sync_run() {
        let (run, stream) = (OpKind::Run.facts(), OpKind::RunStream.facts());
        assert_eq!(
            (
                run.class,
                run.price,
                run.endpoint_rates,
                run.retention,
                run.drain,
                run.unknown,
                run.job
            ),
            (
                stream.class,
                stream.price,
                stream.endpoint_rates,
                stream.retention,
                stream.drain,
                stream.unknown,
                stream.job
            )
        );
        assert_eq!(stream.slot, Some(SlotKind::Stream));
    }
}
