//! Bad stack files and the exact errors a user sees for each: where, what, and how to fix it.
//!
//! Each case is written to `stack.yml` in a fresh directory and loaded; the errors' full `Display`, in order, must
//! equal the expected texts (the directory prefix is removed so the texts read as the user's own file name).

use swarm_specs::loader::LocalFiles;
use swarm_specs::LoadOptions;

struct Case {
    name: &'static str,
    file: &'static [u8],
    errors: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "yaml syntax error: unclosed flow list",
        file: b"services:\n  web:\n    image: nginx\n    ports: [80\n",
        errors: &["stack.yml:4:12: error: invalid YAML: unclosed bracket '['"],
    },
    Case {
        name: "yaml syntax error: unclosed quote",
        file: b"services:\n  web:\n    image: \"nginx\n",
        errors: &["stack.yml:3:12: error: invalid YAML: unclosed quote"],
    },
    Case {
        name: "yaml syntax error: a key indented one space short",
        file: b"services:\n  web:\n    image: nginx\n   deploy: {}\n",
        errors: &["stack.yml:4:4: error: invalid YAML: while parsing a block mapping, did not find expected key"],
    },
    Case {
        name: "tab indentation",
        file: b"services:\n\tweb:\n\t\timage: nginx\n",
        errors: &["stack.yml:2:2: error: invalid YAML: tabs disallowed within this context (block indentation)"],
    },
    Case {
        name: "duplicate key",
        file: b"services:\n  web:\n    image: nginx\n    image: redis\n",
        errors: &["stack.yml:4:5: error: duplicate key \"image\"\n  \
                   hint: a mapping may name each key once; remove or rename one of them"],
    },
    Case {
        name: "duplicate service",
        file: b"services:\n  web:\n    image: nginx\n  web:\n    image: redis\n",
        errors: &["stack.yml:4:3: error: duplicate key \"web\"\n  \
                   hint: a mapping may name each key once; remove or rename one of them"],
    },
    Case {
        name: "undefined anchor",
        file: b"services:\n  web:\n    <<: *base\n    image: nginx\n",
        errors: &["stack.yml:3:9: error: invalid YAML: while parsing node, found unknown anchor"],
    },
    Case {
        name: "wrong type: replicas: three",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      replicas: three\n",
        errors: &["stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"three\""],
    },
    Case {
        name: "wrong type: negative replicas",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      replicas: -1\n",
        errors: &["stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"-1\"\n  \
                   hint: the value must be at least 0"],
    },
    Case {
        name: "wrong type: replicas beyond u64",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 99999999999999999999999\n",
        errors: &["stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, \
                   found \"99999999999999999999999\"\n  hint: the value must be at most 18446744073709551615"],
    },
    Case {
        name: "wrong type: a list where a string goes",
        file: b"services:\n  web:\n    image: [nginx]\n",
        errors: &["stack.yml:3:12: error: services.web.image: expected a string, found a list"],
    },
    Case {
        name: "unknown key with did-you-mean",
        file: b"services:\n  web:\n    imgae: nginx\n",
        errors: &["stack.yml:3:5: error: services.web.imgae: unknown key \"imgae\"\n  hint: did you mean \"image\"?"],
    },
    Case {
        name: "unknown top-level key",
        file: b"services:\n  web:\n    image: nginx\nnetwork:\n  front: {}\n",
        errors: &["stack.yml:4:1: error: network: unknown key \"network\"\n  hint: did you mean \"networks\"?"],
    },
    Case {
        name: "invalid enum: mode: replicatd",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      mode: replicatd\n",
        errors: &["stack.yml:5:13: error: services.web.deploy.mode: invalid value \"replicatd\": expected one of \
                   replicated, global, replicated-job, global-job\n  hint: did you mean \"replicated\"?"],
    },
    Case {
        name: "invalid enum: update order: first",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      update_config:\n        order: first\n",
        errors: &["stack.yml:6:16: error: services.web.deploy.update_config.order: invalid value \"first\": \
                   expected one of stop-first, start-first"],
    },
    Case {
        name: "undefined secret, with a near name",
        file: b"services:\n  web:\n    image: nginx\n    secrets:\n      - db_pasword\n\
                secrets:\n  db_password:\n    external: true\n",
        errors: &["stack.yml:5:9: error: services.web.secrets[0]: secret \"db_pasword\" is not defined\n  \
                   hint: did you mean \"db_password\"?"],
    },
    Case {
        name: "undefined secret",
        file: b"services:\n  web:\n    image: nginx\n    secrets:\n      - token\n",
        errors: &["stack.yml:5:9: error: services.web.secrets[0]: secret \"token\" is not defined\n  \
                   hint: define it under the top-level `secrets:` key"],
    },
    Case {
        name: "undefined config",
        file: b"services:\n  web:\n    image: nginx\n    configs:\n      - source: site\n        target: /etc/site.conf\n",
        errors: &["stack.yml:5:9: error: services.web.configs[0]: config \"site\" is not defined\n  \
                   hint: define it under the top-level `configs:` key"],
    },
    Case {
        name: "undefined network",
        file: b"services:\n  web:\n    image: nginx\n    networks:\n      - frontend\nnetworks:\n  front: {}\n",
        errors: &["stack.yml:5:9: error: services.web.networks[0]: network \"frontend\" is not defined\n  \
                   hint: define it under the top-level `networks:` key"],
    },
    Case {
        name: "undefined volume",
        file: b"services:\n  web:\n    image: nginx\n    volumes:\n      - data:/var/lib/data\n",
        errors: &["stack.yml:5:9: error: services.web.volumes[0]: volume \"data\" is not defined\n  \
                   hint: define it under the top-level `volumes:` key"],
    },
    Case {
        name: "constraint with `=` instead of `==`",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints:\n          - node.role=manager\n",
        errors: &["stack.yml:7:13: error: services.web.deploy.placement.constraints[0]: invalid constraint \
                   \"node.role=manager\": missing operator (use \"==\" or \"!=\", not \"=\", e.g. \"node.role==manager\")"],
    },
    Case {
        name: "constraint with an unknown key",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints:\n          - node.rol == manager\n",
        errors: &["stack.yml:7:13: error: services.web.deploy.placement.constraints[0]: invalid constraint \
                   \"node.rol == manager\": unknown key \"node.rol\" (did you mean \"node.role\"?) (valid keys are \
                   node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch, \
                   node.labels.<name> and engine.labels.<name>)"],
    },
    Case {
        // The second service in the file is the one that clashes, and the first is the one that has the port.
        name: "published port clash between two services",
        file: b"services:\n  web:\n    image: nginx\n    ports:\n      - \"8080:80\"\n  api:\n    image: httpd\n    ports:\n      - \"8080:8080\"\n",
        errors: &["stack.yml:9:9: error: services.api.ports[0]: port 8080/tcp is already published by service \"web\"\n  \
                   hint: each published port can be used by one service; pick another published port"],
    },
    Case {
        name: "replicas on a global service",
        file: b"services:\n  agent:\n    image: nginx\n    deploy:\n      mode: global\n      replicas: 2\n",
        errors: &["stack.yml:6:17: error: services.agent.deploy.replicas: replicas can only be set on a replicated \
                   service\n  hint: remove `replicas`, or use `mode: replicated`"],
    },
    Case {
        name: "bad duration",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      update_config:\n        delay: 10 seconds\n",
        errors: &["stack.yml:6:16: error: services.web.deploy.update_config.delay: invalid duration \"10 seconds\": \
                   unknown unit \" seconds\" (use ns, us, ms, s, m or h, e.g. \"1m30s\")"],
    },
    Case {
        name: "duration without a unit",
        file: b"services:\n  web:\n    image: nginx\n    healthcheck:\n      interval: 10\n",
        errors: &["stack.yml:5:17: error: services.web.healthcheck.interval: invalid duration \"10\": missing unit \
                   after \"10\" (use ns, us, ms, s, m or h, e.g. \"1m30s\"; only a bare \"0\" may omit the unit)"],
    },
    Case {
        name: "bad memory size",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          memory: 12 gigs\n",
        errors: &["stack.yml:7:19: error: services.web.deploy.resources.limits.memory: invalid size \"12 gigs\": \
                   unknown unit \"gigs\" (use b, k, m, g, t or p (binary multiples, case-insensitive), optionally \
                   followed by \"b\" or \"ib\", e.g. \"512m\" or \"1GiB\")"],
    },
    Case {
        name: "bad cpus",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          cpus: two\n",
        errors: &["stack.yml:7:17: error: services.web.deploy.resources.limits.cpus: invalid cpus \"two\": expected \
                   a decimal number of CPUs (e.g. \"0.5\" or \"2\")"],
    },
    Case {
        name: "negative cpus",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          cpus: '-1'\n",
        errors: &["stack.yml:7:17: error: services.web.deploy.resources.limits.cpus: invalid cpus \"-1\": negative \
                   values are not allowed (use a positive number such as \"0.5\" or \"2\")"],
    },
    Case {
        name: "required variable missing",
        file: b"services:\n  web:\n    image: \"registry/app:${X:?need X}\"\n",
        errors: &["stack.yml:3:12: error: services.web.image: required variable X is missing a value: need X\n  \
                   hint: set X in the environment or in the .env file"],
    },
    Case {
        name: "interpolation syntax error: unterminated ${",
        file: b"services:\n  web:\n    image: \"nginx:${TAG\"\n",
        errors: &["stack.yml:3:12: error: services.web.image: invalid interpolation at character 6: unterminated \
                   \"${\" (add the closing \"}\" or write \"$$\" for a literal \"$\")"],
    },
    Case {
        name: "interpolation syntax error: bad variable name",
        file: b"services:\n  web:\n    image: nginx\n    environment:\n      A: \"${1A}\"\n",
        errors: &["stack.yml:5:10: error: services.web.environment.A: invalid interpolation at character 0: invalid \
                   variable name: it starts with '1', but names must start with a letter or \"_\" and contain only \
                   letters, digits and \"_\" (rename the variable, or write \"$$\" for a literal \"$\")"],
    },
    Case {
        name: "missing image",
        file: b"services:\n  web:\n    deploy:\n      replicas: 2\n",
        errors: &["stack.yml:3:5: error: services.web: missing \"image\"\n  \
                   hint: every service needs an image (or `x-swarm: {driver: process}` and a `command`)"],
    },
    Case {
        name: "secret with no file, environment or external",
        file: b"services:\n  web:\n    image: nginx\n    secrets: [token]\nsecrets:\n  token: {}\n",
        errors: &[
            "stack.yml:6:10: error: secrets.token: \"token\" has no content\n  \
             hint: set one of `file`, `environment`, `content` (configs) or `external: true`",
        ],
    },
    Case {
        name: "secret file missing",
        file: b"services:\n  web:\n    image: nginx\n    secrets: [token]\nsecrets:\n  token:\n    file: ./token.txt\n",
        errors: &[
            "stack.yml:7:11: error: secrets.token.file: cannot read token.txt: No such file or directory \
             (os error 2)\n  hint: the path is relative to the stack file's directory",
        ],
    },
    Case {
        name: "invalid port string",
        file: b"services:\n  web:\n    image: nginx\n    ports:\n      - \"80:http\"\n",
        errors: &["stack.yml:5:9: error: services.web.ports[0]: invalid port \"80:http\": target port \"http\" is not \
                   a port number (use [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. \"80\", \"8080:80/udp\" or \
                   \"127.0.0.1:8080:80\")"],
    },
    Case {
        name: "published port out of range",
        file: b"services:\n  web:\n    image: nginx\n    ports:\n      - \"70000:80\"\n",
        errors: &["stack.yml:5:9: error: services.web.ports[0]: invalid port \"70000:80\": published port 70000 is \
                   out of range (ports must be between 1 and 65535)"],
    },
    Case {
        name: "long-syntax target port out of range",
        file: b"services:\n  web:\n    image: nginx\n    ports:\n      - target: 70000\n",
        errors: &["stack.yml:5:17: error: services.web.ports[0].target: expected a non-negative integer, found \
                   \"70000\"\n  hint: the value must be at most 65535"],
    },
    Case {
        name: "invalid volume short syntax",
        file: b"services:\n  web:\n    image: nginx\n    volumes:\n      - \"data:/a:/b:ro\"\n",
        errors: &["stack.yml:5:9: error: services.web.volumes[0]: invalid volume \"data:/a:/b:ro\": too many \":\" \
                   (use [SOURCE:]TARGET[:OPTIONS], e.g. \"/data\", \"dbdata:/var/lib/db:ro\" or \"./cfg:/etc/cfg:ro\"; \
                   paths containing \":\" need the long syntax)"],
    },
    Case {
        name: "volume target not absolute",
        file: b"services:\n  web:\n    image: nginx\n    volumes:\n      - \"data:relative\"\nvolumes:\n  data: {}\n",
        errors: &["stack.yml:5:9: error: services.web.volumes[0]: invalid volume \"data:relative\": target \
                   \"relative\" must be an absolute path inside the container (e.g. \"/data\")"],
    },
    Case {
        name: "file mode out of range",
        file: b"services:\n  web:\n    image: nginx\n    secrets:\n      - source: token\n        mode: 0o17777\n\
                secrets:\n  token:\n    external: true\n",
        errors: &["stack.yml:6:15: error: services.web.secrets[0].mode: file mode 0o17777 is not a valid permission\n  \
                   hint: write it in octal, e.g. 0440"],
    },
    Case {
        // Today: `<file>: error: internal: the checked file did not fit the model: ...`, with no place.
        name: "file mode beyond 32 bits",
        file: b"services:\n  web:\n    image: nginx\n    secrets:\n      - source: token\n        mode: 99999999999\n\
                secrets:\n  token:\n    external: true\n",
        errors: &["stack.yml:6:15: error: services.web.secrets[0].mode: expected a non-negative integer, found \
                   \"99999999999\"\n  hint: the value must be at most 4294967295"],
    },
    Case {
        name: "max_failure_ratio above 1",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      update_config:\n        max_failure_ratio: 1.5\n",
        errors: &["stack.yml:6:28: error: services.web.deploy.update_config.max_failure_ratio: 1.5 is not between 0 \
                   and 1\n  hint: a ratio of 0.1 tolerates one failed task in ten"],
    },
    Case {
        name: "unknown stop signal",
        file: b"services:\n  web:\n    image: nginx\n    stop_signal: SIGFOO\n",
        errors: &["stack.yml:4:18: error: services.web.stop_signal: invalid signal \"SIGFOO\": unknown signal name \
                   (did you mean \"SIGFPE\"?) (use a name such as \"SIGTERM\" or \"TERM\", a number 1-31 or 34-64, or \
                   \"SIGRTMIN+N\"/\"SIGRTMAX-N\")"],
    },
    Case {
        name: "several format errors in one service, in file order",
        file: b"services:\n  web:\n    imgae: nginx\n    deploy:\n      replicas: three\n      mode: replicatd\n",
        errors: &[
            "stack.yml:3:5: error: services.web.imgae: unknown key \"imgae\"\n  hint: did you mean \"image\"?",
            "stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"three\"",
            "stack.yml:6:13: error: services.web.deploy.mode: invalid value \"replicatd\": expected one of \
             replicated, global, replicated-job, global-job\n  hint: did you mean \"replicated\"?",
        ],
    },
    Case {
        // `web` comes first in the file but after `api` alphabetically.
        name: "errors in two services, in file order",
        file: b"services:\n  web:\n    image: nginx\n    networks: [front]\n  api:\n    image: httpd\n    networks: [back]\n",
        errors: &[
            "stack.yml:4:16: error: services.web.networks[0]: network \"front\" is not defined\n  \
             hint: define it under the top-level `networks:` key",
            "stack.yml:7:16: error: services.api.networks[0]: network \"back\" is not defined\n  \
             hint: define it under the top-level `networks:` key",
        ],
    },
    Case {
        // Format errors must not hide the reference and unit errors elsewhere in the file.
        name: "format and semantic errors together, all reported in file order",
        file: b"services:\n  web:\n    image: nginx\n    deploy:\n      replicas: three\n      mode: replicatd\n  api:\n    image: httpd\n    networks: [back]\n    deploy:\n      resources:\n        limits:\n          memory: lots\n",
        errors: &[
            "stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"three\"",
            "stack.yml:6:13: error: services.web.deploy.mode: invalid value \"replicatd\": expected one of \
             replicated, global, replicated-job, global-job\n  hint: did you mean \"replicated\"?",
            "stack.yml:9:16: error: services.api.networks[0]: network \"back\" is not defined\n  \
             hint: define it under the top-level `networks:` key",
            "stack.yml:13:19: error: services.api.deploy.resources.limits.memory: invalid size \"lots\": expected a \
             number at the start (e.g. \"512m\" or \"1.5g\")",
        ],
    },
    Case {
        name: "a list, not a mapping",
        file: b"- web\n- api\n",
        errors: &["stack.yml:1:1: error: a stack file must be a mapping with a `services:` key"],
    },
    Case {
        name: "a scalar, not a mapping",
        file: b"hello\n",
        errors: &["stack.yml:1:1: error: a stack file must be a mapping with a `services:` key"],
    },
    Case {
        // docker: "top-level object must be a mapping". An empty stack would make `apply` remove every service.
        name: "empty file",
        file: b"",
        errors: &["stack.yml:1:1: error: the file is empty\n  hint: a stack file is a mapping with a `services:` key"],
    },
    Case {
        name: "binary garbage",
        file: b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x00",
        errors: &["stack.yml: error: the file is not UTF-8 text"],
    },
];

/// The errors of loading `file`, as displayed, with the temporary directory taken off the file name.
fn errors_of(file: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stack.yml");
    std::fs::write(&path, file).unwrap();
    let options = LoadOptions {
        files: vec![path],
        stack: Some("app".into()),
        ..LoadOptions::default()
    };
    let prefix = format!("{}/", dir.path().display());
    match swarm_specs::load(&options, &LocalFiles) {
        Ok(_) => vec![],
        Err(diagnostics) => diagnostics
            .errors()
            .map(|d| d.to_string().replace(&prefix, ""))
            .collect(),
    }
}

#[test]
fn bad_stack_files_get_exact_errors() {
    assert!(CASES.len() >= 25);
    let mut failures = Vec::new();
    for case in CASES {
        let actual = errors_of(case.file);
        if actual != case.errors {
            failures.push(format!(
                "--- {}\nexpected:\n{}\nactual:\n{}",
                case.name,
                case.errors.join("\n"),
                if actual.is_empty() {
                    "(loaded without errors)".to_string()
                } else {
                    actual.join("\n")
                }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
}
