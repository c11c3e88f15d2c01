//! The etcd state backend against a real three-member cluster with mutual
//! TLS ([`super::etcd_cluster`]): compare-and-swap, create-only, lists,
//! deletes, lease-bound locks, one member down, quorum lost.

use std::time::{Duration, Instant};

use metalherd::state::etcd::EtcdStore;
use metalherd::state::{Expect, Holder, StateError, StateStore};

use super::etcd_cluster::EtcdCluster;

const TTL: Duration = Duration::from_secs(2);

fn store(cluster: &EtcdCluster, prefix: &str) -> EtcdStore {
    EtcdStore::new(cluster.endpoints(), Some(cluster.tls()), prefix, TTL).unwrap()
}

fn holder(operation: &str) -> Holder {
    Holder::current(operation)
}

fn is_conflict(r: &Result<u64, StateError>) -> bool {
    matches!(r, Err(StateError::Conflict { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_compare_and_swap_lists_deletes_and_locks() {
    let cluster = EtcdCluster::start();
    let store = store(&cluster, "/metalherd/smoke");
    assert!(
        store.describe().starts_with("etcd https://127.0.0.1:"),
        "{}",
        store.describe()
    );

    // Create-only.
    let r1 = store
        .put("sites/fra/generation", b"1", Expect::Absent)
        .await
        .unwrap();
    let again = store
        .put("sites/fra/generation", b"x", Expect::Absent)
        .await;
    match &again {
        Err(StateError::Conflict {
            key,
            expected,
            found,
        }) => {
            assert_eq!(key, "sites/fra/generation");
            assert_eq!(expected, "no object");
            assert_eq!(found, &format!("revision {r1}"));
        }
        other => panic!("create-only over an object: {other:?}"),
    }
    let got = store.get("sites/fra/generation").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"1"[..], r1));
    assert_eq!(store.get("sites/nope").await.unwrap(), None);

    // Two writers that read the same revision: one wins.
    let (a, b) = tokio::join!(
        store.put("sites/fra/generation", b"2", Expect::Revision(r1)),
        store.put("sites/fra/generation", b"3", Expect::Revision(r1)),
    );
    assert!(
        a.is_ok() != b.is_ok() && (is_conflict(&a) || is_conflict(&b)),
        "{a:?} {b:?}"
    );
    let winner = a.as_ref().or(b.as_ref()).copied().unwrap();
    let now = store.get("sites/fra/generation").await.unwrap().unwrap();
    assert_eq!(now.revision, winner);
    assert_eq!(
        now.value,
        if a.is_ok() {
            b"2".to_vec()
        } else {
            b"3".to_vec()
        }
    );
    assert!(winner > r1);

    // Any binary value, the empty one too; a plain put returns the revision.
    let binary: Vec<u8> = (0..=255).collect();
    let rb = store
        .put("secrets/blob", &binary, Expect::Any)
        .await
        .unwrap();
    let e = store.get("secrets/blob").await.unwrap().unwrap();
    assert_eq!((e.value, e.revision), (binary, rb));
    store
        .put("sites/ber/generation", b"", Expect::Any)
        .await
        .unwrap();
    assert_eq!(
        store
            .get("sites/ber/generation")
            .await
            .unwrap()
            .unwrap()
            .value,
        b""
    );
    store
        .put("sitesx", b"not below sites/", Expect::Any)
        .await
        .unwrap();

    // Lists: by prefix, relative keys, sorted; another prefix is another store.
    let keys = |entries: Vec<metalherd::state::Entry>| {
        entries.into_iter().map(|e| e.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list("sites/").await.unwrap()),
        ["sites/ber/generation", "sites/fra/generation"]
    );
    assert_eq!(
        keys(store.list("").await.unwrap()),
        [
            "secrets/blob",
            "sites/ber/generation",
            "sites/fra/generation",
            "sitesx"
        ]
    );
    let other = self::store(&cluster, "/metalherd/other/");
    assert!(other.list("").await.unwrap().is_empty());
    assert_eq!(other.get("sitesx").await.unwrap(), None);

    // Deletes with expectations.
    let stale = store
        .delete("sites/fra/generation", Expect::Revision(r1))
        .await;
    assert!(
        matches!(stale, Err(StateError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(matches!(
        store.delete("sites/fra/generation", Expect::Absent).await,
        Err(StateError::Conflict { .. })
    ));
    store
        .delete("sites/fra/generation", Expect::Revision(winner))
        .await
        .unwrap();
    assert_eq!(store.get("sites/fra/generation").await.unwrap(), None);
    store
        .delete("sites/fra/generation", Expect::Absent)
        .await
        .unwrap();
    store
        .delete("sites/fra/generation", Expect::Any)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put("sites/fra/generation", b"9", Expect::Revision(winner))
            .await,
        Err(StateError::Conflict { .. })
    ));
    assert!(matches!(
        store.put("../escape", b"", Expect::Any).await,
        Err(StateError::BadKey(_))
    ));

    // Locks: exclusive, held past the TTL by keepalives, listed.
    let first = holder("bootstrap site fra");
    let guard = store.lock("sites/fra", &first, TTL).await.unwrap();
    let second = store
        .lock("sites/fra", &holder("rebuild site fra"), TTL)
        .await;
    match second {
        Err(StateError::Locked {
            name,
            holder,
            since,
            stale,
        }) => {
            assert_eq!(name, "sites/fra");
            assert_eq!(*holder, first);
            assert_eq!(since, first.since);
            assert!(!stale);
        }
        other => panic!("a second lock: {:?}", other.err()),
    }
    tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
    assert!(
        matches!(
            store.lock("sites/fra", &holder("later"), TTL).await,
            Err(StateError::Locked { .. })
        ),
        "the lock lapsed while its holder kept it alive"
    );
    let listed = store.locks().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), &listed[0].holder),
        ("sites/fra", &first)
    );

    // Release frees it at once.
    guard.release().await.unwrap();
    assert!(store.locks().await.unwrap().is_empty());
    let crashed = store
        .lock("sites/fra", &holder("crashes"), TTL)
        .await
        .unwrap();

    // A holder that crashes (its guard dropped, no release) frees the lock
    // when the lease expires.
    drop(crashed);
    let dropped = Instant::now();
    let taken = loop {
        match store.lock("sites/fra", &holder("after crash"), TTL).await {
            Ok(g) => break g,
            Err(StateError::Locked { .. }) => {
                assert!(
                    dropped.elapsed() < TTL + Duration::from_secs(3),
                    "a dropped lock still held after {:?}",
                    dropped.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    eprintln!(
        "a dropped lock (TTL {TTL:?}) was free after {:?}",
        dropped.elapsed()
    );

    // Breaking a lock returns its holder; its lease is gone too.
    let broken = store.break_lock("sites/fra").await.unwrap().unwrap();
    assert_eq!(broken.operation, "after crash");
    assert_eq!(store.break_lock("sites/fra").await.unwrap(), None);
    taken.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_survives_one_member_down_and_fails_clearly_without_quorum() {
    let started = Instant::now();
    let mut cluster = EtcdCluster::start();
    eprintln!("cluster healthy after {:?}", started.elapsed());
    let store = store(&cluster, "/metalherd/faults/");
    store
        .put("sites/fra/generation", b"1", Expect::Any)
        .await
        .unwrap();
    let lock = store
        .lock("sites/fra", &holder("long operation"), TTL)
        .await
        .unwrap();

    // One member down: everything works through the others, and the
    // lock is kept alive through them past its TTL.
    let leader = cluster.leader();
    cluster.stop_member(0);
    let t = Instant::now();
    let r2 = store
        .put("sites/fra/generation", b"2", Expect::Any)
        .await
        .unwrap();
    eprintln!(
        "put with member 0 (the leader: {}) down: {:?}",
        leader == 0,
        t.elapsed()
    );
    let got = store.get("sites/fra/generation").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"2"[..], r2));
    store
        .put("sites/fra/generation", b"2", Expect::Revision(r2))
        .await
        .unwrap();
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(matches!(
        store.lock("sites/fra", &holder("other"), TTL).await,
        Err(StateError::Locked { .. })
    ));
    let before = store.get("sites/fra/generation").await.unwrap().unwrap();

    // Two members down: quorum is lost; a write fails, clearly and soon.
    // The member left running is the leader: the worst case, as it
    // appends the write to its log before noticing that it is alone.
    let survivor = cluster.leader();
    let follower = if survivor == 1 { 2 } else { 1 };
    cluster.stop_member(follower);
    let (message, took) = put_without_quorum(&store, &cluster).await;
    assert!(message.contains("may still commit it"), "{message}");
    let t = Instant::now();
    let read = store.get("sites/fra/generation").await;
    eprintln!("get without quorum failed after {:?}", t.elapsed());
    assert!(read.is_err(), "a linearizable read without quorum answered");
    assert!(took < Duration::from_secs(15), "{took:?}");

    // Quorum back. The write reported as failed (not confirmed) is
    // committed now: Raft commits what the old leader had logged once it
    // leads again (the others, lacking that entry, can only elect it).
    let t = Instant::now();
    cluster.start_member(0);
    cluster.start_member(follower);
    eprintln!("members back and healthy after {:?}", t.elapsed());
    let after = store.get("sites/fra/generation").await.unwrap().unwrap();
    eprintln!(
        "after recovery (survivor was the leader): {:?}, revision {} (before: {:?}, {})",
        String::from_utf8_lossy(&after.value),
        after.revision,
        String::from_utf8_lossy(&before.value),
        before.revision
    );
    assert_eq!(after.value, b"lost-write");
    lock.release().await.unwrap();
}

/// A put to a cluster without quorum: must fail, naming every endpoint,
/// saying quorum is probably lost, never showing the value. Returns the
/// message and how long it took.
async fn put_without_quorum(store: &EtcdStore, cluster: &EtcdCluster) -> (String, Duration) {
    let t = Instant::now();
    let lost = store
        .put("sites/fra/generation", b"lost-write", Expect::Any)
        .await;
    let took = t.elapsed();
    let message = match lost {
        Err(e @ StateError::Backend { .. }) => e.to_string(),
        other => panic!("a put without quorum: {other:?}"),
    };
    eprintln!("put without quorum failed after {took:?}: {message}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    for endpoint in cluster.endpoints() {
        let endpoint = endpoint.as_str().trim_end_matches('/').to_string();
        assert!(
            message.contains(&endpoint),
            "{endpoint} not named: {message}"
        );
    }
    assert!(message.contains("lost quorum"), "{message}");
    assert!(
        !message.contains("lost-write"),
        "the value leaked: {message}"
    );
    (message, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_write_to_a_follower_without_quorum_never_lands() {
    let mut cluster = EtcdCluster::start();
    let store = store(&cluster, "/metalherd/follower/");
    store
        .put("sites/fra/generation", b"1", Expect::Any)
        .await
        .unwrap();
    // Only a follower is left.
    let leader = cluster.leader();
    let survivor = (leader + 1) % 3;
    for m in (0..3).filter(|&m| m != survivor) {
        cluster.stop_member(m);
    }
    put_without_quorum(&store, &cluster).await;
    for m in (0..3).filter(|&m| m != survivor) {
        cluster.start_member(m);
    }
    let after = store.get("sites/fra/generation").await.unwrap().unwrap();
    assert_eq!(after.value, b"1", "the failed put landed after all");
}
