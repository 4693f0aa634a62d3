//! Mesh routes through the real daemon and CLI: on a chain A — B — C whose middle host does
//! not forward, `xdp_router` on B's two interfaces carries A ↔ C once `routes update` gives
//! it the routes; packets for B itself still reach B's stack; counters per route; forwarding
//! goes on through a SIGKILL of the daemon; bad files are refused with the entry named.

use chaos_tests::{Chain, Daemon, stderr};

#[test]
fn xdp_router_forwards_between_mesh_neighbours() {
    let chain = Chain::new();
    let mut daemon = Daemon::start(&chain.b, "auto_load_programs = false\n");
    let id = daemon.cli_json(&["load", "xdp_router", "--mode", "skb"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon.cli_json(&["attach", &id, &chain.b_to_a]);
    daemon.cli_json(&["attach", &id, &chain.b_to_c]);

    // No routes: B's kernel does not forward, so C is out of reach; B itself answers.
    assert_eq!(chain.ping_from_a(Chain::C, 2), 0);
    assert_eq!(chain.ping_from_a(Chain::B_A, 2), 2);

    let file = daemon.dir.path().join("routes.json");
    std::fs::write(&file, chain.routes_json()).unwrap();
    let listed = daemon.cli_json(&["routes", "update", file.to_str().unwrap()]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(chain.ping_from_a(Chain::C, 5), 5);
    // B's own addresses are not forwarded, even inside a routed prefix.
    assert_eq!(chain.ping_from_a(Chain::B_A, 2), 2);
    assert_eq!(chain.ping_from_a(Chain::B_C, 2), 2);
    let listed = daemon.cli_json(&["routes", "list"]);
    let to_c = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"]["prefix"] == "10.61.3.0/24")
        .unwrap();
    let to_a = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"]["prefix"] == "10.61.1.0/24")
        .unwrap();
    // Five echo requests one way, five replies the other: 98-byte frames.
    assert_eq!(to_c["packets"], 5, "{listed}");
    assert_eq!(to_a["packets"], 5, "{listed}");
    assert_eq!(to_c["bytes"], 5 * 98, "{listed}");
    let text = String::from_utf8_lossy(&daemon.cli(&["routes", "list"]).stdout).into_owned();
    assert!(
        text.contains("10.61.3.0/24") && text.contains(&chain.b_to_c),
        "{text}"
    );

    // SIGKILL: the router stays attached on its pinned links and keeps forwarding with no
    // daemon; the next daemon loads it again onto its pinned maps, routes and all.
    daemon.kill();
    assert_eq!(chain.ping_from_a(Chain::C, 3), 3);
    daemon.start_again(&chain.b);
    let listed = daemon.cli_json(&["routes", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(chain.ping_from_a(Chain::C, 3), 3);

    // Bad files: the entry and the fault are named; the routes stay as they were.
    std::fs::write(
        &file,
        r#"[{"prefix": "10.9.0.0/24", "interface": "nosuch0", "next_hop_mac": "02:00:00:00:00:01"}]"#,
    )
    .unwrap();
    let out = daemon.cli(&["routes", "update", file.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a route to a missing interface was taken"
    );
    assert!(
        stderr(&out).contains("route 0") && stderr(&out).contains("nosuch0"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&file, "{not json").unwrap();
    daemon.cli_fails(
        &["routes", "update", file.to_str().unwrap()],
        "not a routes file",
    );
    assert_eq!(chain.ping_from_a(Chain::C, 2), 2);

    // No routes: back to the kernel, which does not forward.
    std::fs::write(&file, "[]").unwrap();
    daemon.cli_json(&["routes", "update", file.to_str().unwrap()]);
    assert_eq!(chain.ping_from_a(Chain::C, 2), 0);
}
