//! Every path of the handshake, both machines fed by hand or against each
//! other, without sockets.

use super::*;
use crate::aead::Key;
use crate::proto::{FLAG_ENCRYPT, HANDSHAKE_MAX, MAX_BLOCK_SIZE};

const PEER: &str = "peer";

fn key(n: u8) -> Secret {
    Secret::new(Key::from_bytes([n; 32]), true)
}

fn token(n: u8) -> Secret {
    Secret::new(Key::from_bytes([n; 32]), false)
}

fn hello(secret: Option<&Secret>, dry: bool) -> Hello {
    Hello {
        session: 0x1234,
        lane: 0,
        lanes: 2,
        download: false,
        block_size: 1 << 20,
        skip: 3,
        source_size: 10 << 20,
        compression: proto::compression::DEFAULT,
        flags: Secret::flags(secret) | if dry { FLAG_DRY } else { 0 },
        nonce: [7; proto::NONCE_LEN],
    }
}

/// The encoded frames in `bytes`, one by one.
fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (_, used) = proto::decode(&bytes[at..], HANDSHAKE_MAX)
            .expect("valid frame")
            .expect("whole frame");
        out.push(bytes[at..at + used].to_vec());
        at += used;
    }
    out
}

/// Feed the one encoded frame `bytes` to `m`.
fn feed<M: Machine>(m: &mut M, bytes: &[u8]) -> std::result::Result<Step<M::Done>, Refused> {
    let (frame, _) = proto::decode(bytes, HANDSHAKE_MAX)
        .expect("valid frame")
        .expect("whole frame");
    m.feed(frame)
}

fn encoded(f: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    proto::encode(f, &mut out);
    out
}

/// What a refusal tells the peer and the error's text.
fn refusal<D>(r: std::result::Result<Step<D>, Refused>) -> (Option<String>, Error) {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(r) => (r.tell, r.error),
    }
}

/// Both ends' ciphers after a handshake, and what each end decided.
struct Agreed {
    client: (Cipher, Cipher),
    server: (Cipher, Cipher),
    hello: Hello,
}

/// Run the handshake up to both proofs; `flip` changes one byte of the
/// client's first message (Hello and Proof) on its way to the server.
fn run(
    client_secret: Option<&Secret>,
    server_secret: Option<&Secret>,
    h: Hello,
    flip: Option<usize>,
) -> std::result::Result<Agreed, (&'static str, Option<String>, Error)> {
    let (mut server, challenge) = Server::new(PEER, server_secret, [9; proto::NONCE_LEN]);
    let mut client = Client::new(PEER, client_secret, h, None);
    assert_eq!(client.waiting_for(), "the server's challenge");
    let mut step = feed(&mut client, &challenge).map_err(|r| ("client", r.tell, r.error))?;
    assert!(step.protect.is_none() && step.done.is_none());
    if let Some(at) = flip {
        step.send[at] ^= 0x10;
    }
    let frames = split(&step.send);
    assert_eq!(frames.len(), 2, "Hello and Proof");
    assert_eq!(server.waiting_for(), "the client's hello");
    let s1 = feed(&mut server, &frames[0]).map_err(|r| ("server", r.tell, r.error))?;
    assert!(s1.send.is_empty() && s1.done.is_none());
    assert_eq!(server.waiting_for(), "the client's proof");
    let s2 = feed(&mut server, &frames[1]).map_err(|r| ("server", r.tell, r.error))?;
    let hello = s2.done.expect("the server is done");
    let server_ciphers = s2.protect.expect("the server tags from here");
    assert_eq!(client.waiting_for(), "the server's proof");
    let c2 = feed(&mut client, &s2.send).map_err(|r| ("client", r.tell, r.error))?;
    assert!(c2.send.is_empty() && c2.done.is_none());
    Ok(Agreed {
        client: c2.protect.expect("the client tags from here"),
        server: server_ciphers,
        hello,
    })
}

/// Each end's ciphers open what the other's seal, both ways.
fn check_ciphers(a: &mut Agreed) {
    let header = [proto::FRAME_TYPES.start() + 1, 0, 0, 0, 4];
    let mut payload = *b"data";
    let tag = a.client.0.seal(&header, &mut payload);
    a.server.1.open(&header, &mut payload, &tag).expect("up");
    assert_eq!(&payload, b"data");
    let tag = a.server.0.seal(&header, &mut payload);
    a.client.1.open(&header, &mut payload, &tag).expect("down");
    assert_eq!(&payload, b"data");
}

#[test]
fn a_session_opens_without_a_secret_with_a_token_and_with_a_key() {
    for secret in [None, Some(token(1)), Some(key(1))] {
        let h = hello(secret.as_ref(), false);
        let mut agreed = run(secret.as_ref(), secret.as_ref(), h, None).expect("agreed");
        assert_eq!(agreed.hello, h);
        check_ciphers(&mut agreed);
    }
}

#[test]
fn the_welcome_ends_the_clients_handshake() {
    let h = hello(None, false);
    let w = welcome(&h, None, 5);
    let mut client = Client::new(PEER, None, h, None);
    let (server, challenge) = Server::new(PEER, None, [9; 16]);
    drop(server);
    feed(&mut client, &challenge).expect("hello");
    let proofs = Handshake::new(None, &[9; 16], 0, &h);
    let (check, tag) = proofs.proof(Direction::Down);
    feed(&mut client, &encoded(&Frame::Proof { check, tag })).expect("proof");
    assert_eq!(client.waiting_for(), "the server's welcome");
    let step = feed(&mut client, &encoded(&Frame::Welcome(w))).expect("welcome");
    assert_eq!(step.done, Some(w));
}

#[test]
fn a_different_version_or_no_bsync_is_refused_at_the_preamble() {
    check_preamble(PEER, PREAMBLE).expect("ours");
    let e = check_preamble(PEER, b"BSYNC ver0.01\n").unwrap_err();
    assert!(
        e.to_string().contains("peer speaks protocol ver0.01")
            && e.to_string().contains(PROTOCOL_VERSION),
        "{e}"
    );
    let e = check_preamble(PEER, b"SSH-2.0-OpenSS").unwrap_err();
    assert!(e.to_string().contains("not a bsync peer"), "{e}");
}

#[test]
fn a_key_a_token_and_nothing_refuse_each_other_on_both_ends() {
    let kinds = [None, Some(token(1)), Some(key(1))];
    for ours in &kinds {
        for theirs in &kinds {
            if ours.is_some() == theirs.is_some()
                && ours.as_ref().map(Secret::encrypts) == theirs.as_ref().map(Secret::encrypts)
            {
                continue;
            }
            // The client refuses the server's challenge before sending anything.
            let (_, challenge) = Server::new(PEER, theirs.as_ref(), [9; 16]);
            let mut client = Client::new(PEER, ours.as_ref(), hello(ours.as_ref(), false), None);
            let (tell, e) = refusal(feed(&mut client, &challenge));
            assert!(tell.unwrap().starts_with(AUTH_FAILED));
            assert!(matches!(e, Error::Auth { .. }), "{e}");
            assert!(e.to_string().contains("the server has"), "{e}");
            // The server refuses the client's hello.
            let (mut server, _) = Server::new(PEER, theirs.as_ref(), [9; 16]);
            let h = hello(ours.as_ref(), false);
            let (tell, e) = refusal(feed(&mut server, &encoded(&Frame::Hello(h))));
            let tell = tell.unwrap();
            assert!(tell.starts_with(AUTH_FAILED) && tell.contains("the server has"));
            assert!(e.to_string().contains("the client has"), "{e}");
        }
    }
}

#[test]
fn another_key_or_token_is_refused_by_the_server_and_by_the_client() {
    for (a, b) in [(key(1), key(2)), (token(1), token(2))] {
        let h = hello(Some(&a), false);
        let Err(("server", tell, e)) = run(Some(&a), Some(&b), h, None) else {
            panic!("the server must refuse");
        };
        assert_eq!(
            tell.as_deref(),
            Some("authentication failed: the server holds a different key or token")
        );
        assert!(matches!(e, Error::Auth { .. }));
        assert!(
            e.to_string().contains("the client holds a different"),
            "{e}"
        );
        // A server proof under another secret, as the client sees it.
        let mut client = Client::new(PEER, Some(&a), h, None);
        let (_, challenge) = Server::new(PEER, Some(&b), [9; 16]);
        feed(&mut client, &challenge).expect("hello");
        let theirs = Handshake::new(Some(&b), &[9; 16], Secret::flags(Some(&b)), &h);
        let (check, tag) = theirs.proof(Direction::Down);
        let (tell, e) = refusal(feed(&mut client, &encoded(&Frame::Proof { check, tag })));
        assert_eq!(tell, None);
        assert!(
            e.to_string().contains("the server holds a different"),
            "{e}"
        );
    }
}

#[test]
fn unknown_flags_never_reach_the_handshake() {
    let mut bytes = encoded(&Frame::Hello(hello(None, false)));
    bytes[proto::HEADER_LEN + 42] = 8;
    assert!(proto::decode(&bytes, HANDSHAKE_MAX).is_err());
    let mut bytes = encoded(&Frame::Challenge {
        nonce: [0; 16],
        flags: 0,
    });
    bytes[proto::HEADER_LEN + 16] = FLAG_ENCRYPT;
    assert!(proto::decode(&bytes, HANDSHAKE_MAX).is_err());
}

#[test]
fn a_corrupted_hello_fails_the_proof_with_and_without_a_key() {
    // Byte 30 of the first message is in the Hello's skip: it still decodes.
    for secret in [None, Some(token(1)), Some(key(1))] {
        let h = hello(secret.as_ref(), false);
        let Err(("server", tell, e)) = run(secret.as_ref(), secret.as_ref(), h, Some(30)) else {
            panic!("the server must refuse");
        };
        assert!(tell.unwrap().contains("changed in transit"));
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("the client's proof covers other bytes")
        );
    }
}

#[test]
fn a_corrupted_proof_or_challenge_is_refused() {
    for secret in [None, Some(key(1))] {
        let s = secret.as_ref();
        let h = hello(s, false);
        // The client's proof, changed on its way to the server.
        let at = encoded(&Frame::Hello(h)).len() + proto::HEADER_LEN;
        let Err(("server", _, e)) = run(s, s, h, Some(at)) else {
            panic!("the server must refuse");
        };
        assert!(e.to_string().contains("changed in transit"), "{e}");
        // The challenge, changed on its way to the client: the client
        // proves another transcript, which the server refuses.
        let (mut server, mut challenge) = Server::new(PEER, s, [9; 16]);
        challenge[proto::HEADER_LEN] ^= 1;
        let mut client = Client::new(PEER, s, h, None);
        let sent = feed(&mut client, &challenge).expect("hello").send;
        let frames = split(&sent);
        feed(&mut server, &frames[0]).expect("hello");
        let (tell, e) = refusal(feed(&mut server, &frames[1]));
        assert!(tell.is_some() && e.to_string().contains("changed in transit"));
        // The server's proof, changed on its way to the client.
        let (_, challenge) = Server::new(PEER, s, [9; 16]);
        let mut client = Client::new(PEER, s, h, None);
        feed(&mut client, &challenge).expect("hello");
        let theirs = Handshake::new(s, &[9; 16], Secret::flags(s), &h);
        let (mut check, tag) = theirs.proof(Direction::Down);
        check[0] ^= 1;
        let (tell, e) = refusal(feed(&mut client, &encoded(&Frame::Proof { check, tag })));
        assert_eq!(tell, None);
        assert!(
            e.to_string()
                .contains("the server's proof covers other bytes")
        );
    }
}

#[test]
fn frames_out_of_place_are_refused_and_the_peers_error_is_reported() {
    let h = hello(None, false);
    let mut client = Client::new(PEER, None, h, None);
    let e = refusal(feed(
        &mut client,
        &encoded(&Frame::Welcome(welcome(&h, None, 0))),
    ))
    .1;
    assert!(e.to_string().contains("unexpected Welcome frame"), "{e}");
    let mut client = Client::new(PEER, None, h, None);
    let e = refusal(feed(
        &mut client,
        &encoded(&Frame::Error("authentication failed: no")),
    ))
    .1;
    assert!(
        matches!(e, Error::Auth { ref why, .. } if why == "no"),
        "{e}"
    );
    let (mut server, _) = Server::new(PEER, None, [9; 16]);
    let e = refusal(feed(&mut server, &encoded(&Frame::Error("gone")))).1;
    assert!(
        matches!(e, Error::Remote { ref msg, .. } if msg == "gone"),
        "{e}"
    );
    let (mut server, _) = Server::new(PEER, None, [9; 16]);
    let e = refusal(feed(
        &mut server,
        &encoded(&Frame::Welcome(welcome(&h, None, 0))),
    ))
    .1;
    assert!(e.to_string().contains("expected a Hello frame"), "{e}");
    feed(&mut server, &encoded(&Frame::Hello(h))).expect("hello");
    let e = refusal(feed(&mut server, &encoded(&Frame::Hello(h)))).1;
    assert!(e.to_string().contains("expected a Proof frame"), "{e}");
}

#[test]
fn probes_are_answered_until_their_limit() {
    let (mut server, _) = Server::new(PEER, None, [9; 16]);
    let data = vec![0u8; 1000];
    let step = feed(&mut server, &encoded(&Frame::Probe(&data))).expect("probe");
    assert!(step.send.is_empty());
    let step = feed(&mut server, &encoded(&Frame::Probe(&[]))).expect("end of probe");
    assert_eq!(step.send, encoded(&Frame::Probe(&[])));
    // At the limit, by feeding the machine a large probe directly.
    let big = vec![0u8; proto::PROBE_LIMIT - 1000];
    server.feed(Frame::Probe(&big)).expect("up to the limit");
    let e = refusal(server.feed(Frame::Probe(&[0]))).1;
    assert!(e.to_string().contains("too many Probe bytes"), "{e}");
}

#[test]
fn a_server_refuses_the_wrong_direction_lanes_block_size_and_compression() {
    let h = hello(None, false);
    admit(Role::Destination, &h).expect("an upload to a destination");
    let down = Hello {
        download: true,
        ..h
    };
    admit(Role::Source, &down).expect("a download from a source");
    assert!(
        admit(Role::Destination, &down)
            .unwrap_err()
            .contains("is a destination")
    );
    assert!(admit(Role::Source, &h).unwrap_err().contains("is a source"));
    let refused = |h: Hello| admit(Role::Destination, &h).unwrap_err();
    assert!(refused(Hello { lane: 1, ..h }).contains("lane 1 of an unknown session"));
    assert!(refused(Hello { lanes: 0, ..h }).contains("0 lanes is out of range"));
    let over = MAX_LANES + 1;
    assert!(refused(Hello { lanes: over, ..h }).contains("65 lanes is out of range"));
    admit(
        Role::Destination,
        &Hello {
            lanes: MAX_LANES,
            ..h
        },
    )
    .expect("MAX_LANES");
    assert!(refused(Hello { block_size: 0, ..h }).contains("block size 0 is out of range"));
    let too_big = u32::try_from(MAX_BLOCK_SIZE + 1).unwrap();
    assert!(
        refused(Hello {
            block_size: too_big,
            ..h
        })
        .contains("out of range")
    );
    let max = u32::try_from(MAX_BLOCK_SIZE).unwrap();
    admit(
        Role::Destination,
        &Hello {
            block_size: max,
            ..h
        },
    )
    .expect("MAX_BLOCK_SIZE");
    assert!(
        refused(Hello {
            compression: 9,
            ..h
        })
        .contains("unknown compression 9")
    );
}

#[test]
fn a_server_on_stdio_takes_one_lane() {
    let h = hello(None, false);
    assert!(admit_stdio(&h).unwrap_err().contains("one lane"));
    admit_stdio(&Hello { lanes: 1, ..h }).expect("one lane");
}

#[test]
fn the_client_refuses_a_welcome_that_contradicts_its_hello() {
    let h = hello(None, false);
    let agreed = welcome(&h, None, 5);
    let after_proofs = |expect: Option<Welcome>| {
        let mut client = Client::new(PEER, None, h, expect);
        let (_, challenge) = Server::new(PEER, None, [9; 16]);
        feed(&mut client, &challenge).expect("hello");
        let proofs = Handshake::new(None, &[9; 16], 0, &h);
        let (check, tag) = proofs.proof(Direction::Down);
        feed(&mut client, &encoded(&Frame::Proof { check, tag })).expect("proof");
        client
    };
    for (w, why) in [
        (Welcome { skip: 0, ..agreed }, "skip 0 instead of 3"),
        (Welcome { lanes: 1, ..agreed }, "1 lanes instead of 2"),
        (
            Welcome {
                block_size: 4096,
                ..agreed
            },
            "block size 4096 instead of",
        ),
        (
            Welcome {
                source_size: 1,
                ..agreed
            },
            "source size 1 instead of",
        ),
    ] {
        let e = refusal(after_proofs(None).feed(Frame::Welcome(w))).1;
        assert!(e.to_string().contains(why), "{e}");
    }
    // A download takes the source's block size, within the limits.
    let down = Hello {
        download: true,
        source_size: 0,
        ..h
    };
    let mut client = Client::new(PEER, None, down, None);
    client.state = ClientState::Welcome;
    let theirs = welcome(&down, Some((1 << 30, 4096)), 5);
    assert_eq!(
        client.feed(Frame::Welcome(theirs)).ok().unwrap().done,
        Some(theirs)
    );
    let mut client = Client::new(PEER, None, down, None);
    client.state = ClientState::Welcome;
    let e = refusal(client.feed(Frame::Welcome(Welcome {
        block_size: 0,
        ..theirs
    })))
    .1;
    assert!(e.to_string().contains("block size 0 out of range"), "{e}");
    // A later lane must get lane 0's Welcome.
    let w = after_proofs(Some(agreed)).feed(Frame::Welcome(agreed));
    assert_eq!(w.ok().unwrap().done, Some(agreed));
    let other = Welcome { salt: 6, ..agreed };
    let e = refusal(after_proofs(Some(agreed)).feed(Frame::Welcome(other))).1;
    assert!(e.to_string().contains("the session changed"), "{e}");
}

#[test]
fn a_dry_session_opens_with_and_without_a_key_and_takes_the_clients_sizes() {
    for secret in [None, Some(key(3))] {
        let h = hello(secret.as_ref(), true);
        let agreed = run(secret.as_ref(), secret.as_ref(), h, None).expect("agreed");
        assert!(is_dry(&agreed.hello));
        let w = welcome(&agreed.hello, None, 1);
        assert_eq!((w.block_size, w.source_size), (h.block_size, h.source_size));
    }
    assert!(!is_dry(&hello(None, false)));
}

#[test]
fn a_source_server_says_its_own_sizes() {
    let h = Hello {
        download: true,
        source_size: 0,
        ..hello(None, false)
    };
    let w = welcome(&h, Some((123, 4096)), 42);
    assert_eq!(
        w,
        Welcome {
            block_size: 4096,
            source_size: 123,
            skip: h.skip,
            salt: 42,
            lanes: h.lanes,
        }
    );
}

#[test]
fn later_lanes_rejoin_open_the_session_or_are_busy() {
    let h = |session, lane| Hello {
        session,
        lane,
        ..hello(None, false)
    };
    // While the session opens: 2 of 4 lanes have joined.
    assert_eq!(place(1, 4, 2, &h(1, 1)), Place::Again(1));
    assert_eq!(place(1, 4, 2, &h(1, 2)), Place::Next);
    assert_eq!(place(1, 4, 2, &h(1, 3)), Place::Busy);
    // Once it runs: every lane has joined, and a lost one rejoins.
    assert_eq!(place(1, 4, 4, &h(1, 3)), Place::Again(3));
    assert_eq!(place(1, 4, 4, &h(1, 4)), Place::Busy);
    // Another session: its lane 0 is a new client, the rest are busy.
    assert_eq!(place(1, 4, 4, &h(2, 0)), Place::Newcomer);
    assert_eq!(place(1, 4, 4, &h(2, 1)), Place::Busy);
}

#[test]
fn a_new_client_takes_over_only_after_the_grace() {
    assert_eq!(takeover(None), Takeover::Busy);
    assert_eq!(
        takeover(Some(Duration::from_secs(1))),
        Takeover::Wait(TAKEOVER_GRACE - Duration::from_secs(1))
    );
    assert_eq!(takeover(Some(TAKEOVER_GRACE)), Takeover::Now);
    assert_eq!(takeover(Some(TAKEOVER_GRACE * 2)), Takeover::Now);
}
