//! Jobs through the client against the mock: the recorded state machines, progress and log,
//! filters, admin-only listing and access errors.

use cellpose_train_worker::girder::{GirderError, JobFilter, JobStatus, JobUpdate, NewJob};
use serde_json::json;

use super::girder_seed::{creator, raw_get, seeded};

fn new_job(title: &str, handler: Option<&str>) -> NewJob {
    NewJob {
        title: title.into(),
        job_type: "cellpose.train".into(),
        handler: handler.map(str::to_string),
        kwargs: Some(json!({"datasetId": "abc", "epochs": 3})),
        public: false,
    }
}

fn status(s: JobStatus) -> JobUpdate {
    JobUpdate { status: Some(s), ..Default::default() }
}

fn transition_error(err: &GirderError) -> (&str, Option<&str>) {
    match err {
        GirderError::Http { status: 400, message, field, .. } => (message.as_str(), field.as_deref()),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn the_default_state_machine_progress_and_log_follow_the_record() {
    let s = seeded().await;
    let alice = creator(&s, &s.alice).await;
    let jobs = alice.jobs();
    let job = jobs.create(&new_job("train", None)).await.unwrap();
    assert_eq!((job.status, job.log.as_deref()), (JobStatus::INACTIVE, Some(&[][..])));
    assert!(job.kwargs.is_none(), "kwargs are for site admins only");
    let err = jobs.update(&job.id, &status(JobStatus::SUCCESS)).await.unwrap_err();
    assert_eq!(
        transition_error(&err),
        ("Invalid state transition to '3', Current state is '0'.", Some("status"))
    );
    let err = jobs.update(&job.id, &status(JobStatus(99))).await.unwrap_err();
    assert_eq!(transition_error(&err), ("Invalid job status 99.", Some("status")));
    let running = JobUpdate {
        status: Some(JobStatus::RUNNING),
        progress_total: Some(10.0),
        progress_current: Some(3.0),
        progress_message: Some("working".into()),
        log: Some("started\n".into()),
        ..Default::default()
    };
    let after = jobs.update(&job.id, &running).await.unwrap();
    assert_eq!(after.status, JobStatus::RUNNING);
    assert!(after.log.is_none(), "PUT /job answers without the log");
    assert_eq!(after.timestamps.len(), 1);
    jobs.update(&job.id, &JobUpdate { log: Some("step 2\n".into()), ..Default::default() }).await.unwrap();
    let p = jobs
        .update(
            &job.id,
            &JobUpdate {
                progress_current: Some(10.0),
                progress_message: Some("done".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let progress = p.progress.unwrap();
    assert_eq!(
        (progress.current, progress.total, progress.message.as_deref()),
        (Some(10.0), Some(10.0), Some("done"))
    );
    jobs.update(&job.id, &status(JobStatus::SUCCESS)).await.unwrap();
    let same = jobs.update(&job.id, &status(JobStatus::SUCCESS)).await.unwrap();
    assert_eq!(same.timestamps.len(), 2, "setting the same status again is a no-op");
    let err = jobs.update(&job.id, &status(JobStatus::ERROR)).await.unwrap_err();
    assert_eq!(transition_error(&err).0, "Invalid state transition to '4', Current state is '3'.");
    let full = jobs.get(&job.id).await.unwrap();
    assert_eq!(full.log.unwrap(), ["started\n", "step 2\n"]);
    // a refused move changes nothing, log included
    let err = jobs
        .update(
            &job.id,
            &JobUpdate { status: Some(JobStatus::RUNNING), log: Some("x".into()), ..Default::default() },
        )
        .await;
    assert!(err.is_err());
    assert_eq!(jobs.get(&job.id).await.unwrap().log.unwrap().len(), 2);
    let overwritten = JobUpdate { log: Some("only\n".into()), overwrite_log: true, ..Default::default() };
    jobs.update(&job.id, &overwritten).await.unwrap();
    assert_eq!(jobs.get(&job.id).await.unwrap().log.unwrap(), ["only\n"]);
}

#[tokio::test]
async fn worker_handler_jobs_use_the_worker_plugins_table() {
    let s = seeded().await;
    let alice = creator(&s, &s.alice).await;
    let jobs = alice.jobs();
    let job = jobs.create(&new_job("w", Some("worker_handler"))).await.unwrap();
    let err = jobs.update(&job.id, &status(JobStatus::RUNNING)).await.unwrap_err();
    assert_eq!(transition_error(&err).0, "Invalid state transition to '2', Current state is '0'.");
    for next in [JobStatus::QUEUED, JobStatus::RUNNING, JobStatus::PUSHING_OUTPUT, JobStatus::SUCCESS] {
        assert_eq!(jobs.update(&job.id, &status(next)).await.unwrap().status, next);
    }
    let running = jobs.create(&new_job("w2", Some("worker_handler"))).await.unwrap();
    jobs.update(&running.id, &status(JobStatus::QUEUED)).await.unwrap();
    jobs.update(&running.id, &status(JobStatus::RUNNING)).await.unwrap();
    assert_eq!(jobs.cancel(&running.id).await.unwrap().status, JobStatus::CANCELING);
    assert_eq!(
        jobs.update(&running.id, &status(JobStatus::CANCELED)).await.unwrap().status,
        JobStatus::CANCELED
    );
    let plain = jobs.create(&new_job("p", None)).await.unwrap();
    assert_eq!(jobs.cancel(&plain.id).await.unwrap().status, JobStatus::CANCELED);
}

#[tokio::test]
async fn listing_filters_by_type_and_status_and_all_jobs_are_only_those_one_may_read() {
    let s = seeded().await;
    let err = s.alice.jobs().create(&new_job("refused", None)).await.unwrap_err();
    assert!(
        matches!(&err, GirderError::Forbidden { message, .. } if message == "Invalid token scope, required: jobs.rest.create_job."),
        "a login token may not create jobs: {err:?}"
    );
    let (alice, bob) = (creator(&s, &s.alice).await, creator(&s, &s.bob).await);
    let a = alice.jobs().create(&new_job("a", None)).await.unwrap();
    let b = alice.jobs().create(&NewJob { job_type: "other".into(), ..new_job("b", None) }).await.unwrap();
    s.alice.jobs().update(&a.id, &status(JobStatus::QUEUED)).await.unwrap();
    let c = bob.jobs().create(&new_job("c", None)).await.unwrap();
    s.bob.jobs().update(&c.id, &status(JobStatus::QUEUED)).await.unwrap();
    let mine = s.alice.jobs().list(&JobFilter::default()).await.unwrap();
    assert_eq!(
        mine.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [b.id.as_str(), a.id.as_str()],
        "newest first"
    );
    let queued = JobFilter {
        types: Some(vec!["cellpose.train".into()]),
        statuses: Some(vec![JobStatus::QUEUED]),
        oldest_first: true,
        ..Default::default()
    };
    let all = s.admin.jobs().list_all(&queued).await.unwrap();
    assert_eq!(all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [a.id.as_str(), c.id.as_str()]);
    assert_eq!(all[0].kwargs, Some(json!({"datasetId": "abc", "epochs": 3})), "an admin sees kwargs");
    // girder_jobs' /job/all is every job the caller may read: a user's own
    let own = s.alice.jobs().list_all(&queued).await.unwrap();
    assert_eq!(own.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [a.id.as_str()]);
    assert!(matches!(s.anonymous.jobs().list_all(&queued).await, Err(GirderError::Unauthorized { .. })));
    let token = s.alice.token().await.unwrap();
    let resp = raw_get(&s.mock, "job", token.as_ref()).await;
    assert!(resp.headers().get("girder-total-count").is_none(), "GET /job sends no total count");
}

#[tokio::test]
async fn other_users_get_403_anonymous_401_and_the_job_token_may_update() {
    let s = seeded().await;
    let alice = creator(&s, &s.alice).await;
    let job = alice.jobs().create(&new_job("a", None)).await.unwrap();
    let err = s
        .bob
        .jobs()
        .update(&job.id, &JobUpdate { progress_current: Some(1.0), ..Default::default() })
        .await
        .unwrap_err();
    let GirderError::Forbidden { message, .. } = &err else { panic!("{err:?}") };
    let bob_id = s.bob.users().me().await.unwrap().id;
    assert_eq!(message, &format!("Write access denied for job {} (user {bob_id}).", job.id));
    let err = s.anonymous.jobs().update(&job.id, &status(JobStatus::RUNNING)).await.unwrap_err();
    assert!(
        matches!(&err, GirderError::Unauthorized { message, .. } if message == "You must be logged in or have a valid auth token.")
    );
    let job_token = job.job_info_spec.unwrap().headers.girder_token.expect("jobInfoSpec carries a job token");
    let as_job = s.anonymous.with_token(job_token);
    assert_eq!(
        as_job.jobs().update(&job.id, &status(JobStatus::RUNNING)).await.unwrap().status,
        JobStatus::RUNNING
    );
    let other = alice.jobs().create(&new_job("b", None)).await.unwrap();
    assert!(
        as_job.jobs().update(&other.id, &status(JobStatus::RUNNING)).await.is_err(),
        "the token is scoped to one job"
    );
}
