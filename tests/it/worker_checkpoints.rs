//! A job's checkpoints in Girder, removed when the job ends: on a Girder without a local
//! Celery worker `DELETE /folder` answers 503, so the items go first and the folder is tried once.

use cellpose_train_worker::girder::ParentType;
use cellpose_train_worker::job::store;
use cellpose_train_worker::mock_girder::MockConfig;
use cellpose_train_worker::worker::checkpoints::{self, Point};

use super::girder_seed::{clear_requests, count, requests, seeded, seeded_with, Seeded};

const JOB: &str = "0123456789abcdef01234567";

/// Stores checkpoints after epochs 1 and 3 (the second replaces the first) and returns the
/// job's checkpoint folder id.
async fn two_checkpoints(s: &Seeded) -> String {
    let uid = &s.alice_user.id;
    checkpoints::save(&s.alice, uid, JOB, Point { epoch: 1, step: 0 }, vec![1; 1000]).await.unwrap();
    checkpoints::save(&s.alice, uid, JOB, Point { epoch: 3, step: 0 }, vec![3; 1000]).await.unwrap();
    let (at, bytes) = checkpoints::latest(&s.alice, uid, JOB).await.unwrap().unwrap();
    assert_eq!((at.epoch, bytes.len(), bytes[0]), (3, 1000, 3));
    store::cellpose_folder(&s.alice, uid, &["checkpoints", JOB]).await.unwrap().id
}

#[tokio::test]
async fn checkpoint_items_are_removed_although_girder_refuses_the_folder_delete() {
    let s = seeded().await;
    let folder = two_checkpoints(&s).await;
    assert_eq!(s.alice.items().list(&folder).await.unwrap().len(), 1);
    clear_requests(&s.mock).await;

    let folder_went = checkpoints::remove(&s.alice, &s.alice_user.id, JOB).await.unwrap();

    assert!(!folder_went, "the mock refuses folder deletes by default, as a plain Girder 5 does");
    assert!(s.alice.items().list(&folder).await.unwrap().is_empty(), "checkpoint data left behind");
    let log = requests(&s.mock).await;
    assert_eq!(
        count(&log, "DELETE", &format!("/folder/{folder}")),
        1,
        "a 503 refusal is not retried: {log:?}"
    );
    assert!(log.iter().any(|(m, p, st)| m == "DELETE" && p.contains("/item/") && *st == Some(200)));
    // nothing left to find, and a second clean-up is harmless
    assert!(checkpoints::latest(&s.alice, &s.alice_user.id, JOB).await.unwrap().is_none());
    checkpoints::remove(&s.alice, &s.alice_user.id, JOB).await.unwrap();
}

#[tokio::test]
async fn a_mid_epoch_checkpoint_is_a_new_item_and_the_latest() {
    let s = seeded().await;
    let uid = &s.alice_user.id;
    checkpoints::save(&s.alice, uid, JOB, Point { epoch: 14, step: 0 }, vec![1; 10]).await.unwrap();
    checkpoints::save(&s.alice, uid, JOB, Point { epoch: 14, step: 3 }, vec![2; 10]).await.unwrap();
    let (at, bytes) = checkpoints::latest(&s.alice, uid, JOB).await.unwrap().unwrap();
    assert_eq!((at, bytes[0]), (Point { epoch: 14, step: 3 }, 2));
}

#[tokio::test]
async fn with_a_local_worker_the_checkpoint_folder_goes_too() {
    let s = seeded_with(MockConfig { local_worker: true, ..Default::default() }).await;
    let folder = two_checkpoints(&s).await;
    assert!(checkpoints::remove(&s.alice, &s.alice_user.id, JOB).await.unwrap());
    let parent = store::cellpose_folder(&s.alice, &s.alice_user.id, &["checkpoints"]).await.unwrap();
    assert!(s.alice.folders().list(ParentType::Folder, &parent.id).await.unwrap().is_empty());
    assert!(s.alice.folders().get(&folder).await.is_err());
}

#[tokio::test]
async fn a_checkpoint_at_a_point_already_stored_keeps_it_resumable() {
    // SIGTERM right at an epoch boundary checkpoints the epoch the periodic checkpoint just saved
    let s = seeded().await;
    let uid = &s.alice_user.id;
    let at8 = Point { epoch: 8, step: 0 };
    checkpoints::save(&s.alice, uid, JOB, at8, vec![8; 1000]).await.unwrap();
    checkpoints::save(&s.alice, uid, JOB, at8, vec![8; 1000]).await.unwrap();
    let folder = store::cellpose_folder(&s.alice, uid, &["checkpoints", JOB]).await.unwrap().id;
    let names: Vec<String> =
        s.alice.items().list(&folder).await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["epoch-000008"]);
    let (point, bytes) = checkpoints::latest(&s.alice, uid, JOB).await.unwrap().expect("still resumable");
    assert_eq!((point, bytes.len()), (at8, 1000));
}
