//! The reconciler's status source (`limits::reconcile::JobStatus`): fal itself, asked with the
//! server-held key, like a poll. `limits` defines the trait; it is implemented here so that
//! `limits` needs nothing of `upstream`.

use std::future::Future;

use crate::fal::{AppId, Call, FalRequestId, Op};
use crate::limits::reconcile::{JobState, JobStatus};

use super::{relay, Upstream};

/// fal itself: a status call with the server-held key, like a poll's.
impl JobStatus for Upstream {
    fn status(&self, app: &AppId, id: &FalRequestId) -> impl Future<Output = JobState> + Send {
        let call = Call {
            op: Op::Status {
                app: app.clone(),
                id: id.clone(),
                logs: false,
            },
        };
        async move {
            let Ok(response) = self.send(&call, http::HeaderMap::new(), None).await else {
                return JobState::Unknown;
            };
            match relay::buffer(self, &call, response).await {
                Ok(answer) if answer.status.is_success() && answer.completed() => JobState::Ended,
                Ok(answer) if answer.status.is_success() => JobState::Running,
                _ => JobState::Unknown,
            }
        }
    }
}
