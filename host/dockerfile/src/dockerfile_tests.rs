//! The parser against examples from the Dockerfile reference.

use super::*;

fn kinds(text: &str) -> Vec<Kind> {
    let d = parse(text).unwrap();
    d.stages
        .into_iter()
        .flat_map(|s| {
            std::iter::once(s.from.kind).chain(s.instructions.into_iter().map(|i| i.kind))
        })
        .collect()
}

#[test]
fn continuations_comments_and_forms() {
    let d = parse(
        "# syntax=docker/dockerfile:1\nFROM bb AS Build\n# a comment\nRUN echo a \\\n  # inside\n\n  && echo b\nCMD [\"sh\", \"-c\", \"x\"]\nENTRYPOINT top -b\n",
    )
    .unwrap();
    let s = &d.stages[0];
    assert_eq!(s.name.as_deref(), Some("build"));
    assert_eq!(
        s.instructions[0].kind,
        Kind::Run(CommandForm::Shell("echo a   && echo b".into()))
    );
    assert_eq!(s.instructions[0].original, "RUN echo a   && echo b");
    assert_eq!(
        s.instructions[1].kind,
        Kind::Cmd(CommandForm::Exec(vec![
            "sh".into(),
            "-c".into(),
            "x".into()
        ]))
    );
    assert_eq!(
        s.instructions[2].kind,
        Kind::Entrypoint(CommandForm::Shell("top -b".into()))
    );
    // An invalid JSON array is the shell form, as in dockerd.
    assert_eq!(
        kinds("FROM x\nCMD [\"a\", b]")[1],
        Kind::Cmd(CommandForm::Shell("[\"a\", b]".into()))
    );
}

#[test]
fn escape_directive() {
    let d = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /b\n").unwrap();
    assert_eq!(d.escape, '`');
    assert_eq!(
        d.stages[0].instructions[0].kind,
        Kind::Run(CommandForm::Shell("dir c:\\   /b".into()))
    );
    assert!(parse("# escape=x\nFROM x").is_err());
}

#[test]
fn env_label_arg_forms() {
    let k = kinds("FROM x\nENV A=1 B=\"two words\" C=three\\ x\nENV legacy value with spaces\nLABEL \"a.b\"=c\nARG V=1 W\n");
    assert_eq!(
        k[1],
        Kind::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into()),
            ("C".into(), "three\\ x".into())
        ])
    );
    assert_eq!(
        k[2],
        Kind::Env(vec![("legacy".into(), "value with spaces".into())])
    );
    assert_eq!(k[3], Kind::Label(vec![("\"a.b\"".into(), "c".into())]));
    assert_eq!(
        k[4],
        Kind::Arg(vec![("V".into(), Some("1".into())), ("W".into(), None)])
    );
    assert!(parse("FROM x\nENV A=1 B").is_err());
}

#[test]
fn copy_flags_and_buildkit_only_syntax() {
    let k = kinds("FROM x\nCOPY --from=build --chown=1:2 a b /dst/\nADD [\"x y\", \"/z\"]\n");
    assert_eq!(
        k[1],
        Kind::Copy(CopySpec {
            from: Some("build".into()),
            chown: Some("1:2".into()),
            srcs: vec!["a".into(), "b".into()],
            dest: "/dst/".into()
        })
    );
    assert_eq!(
        k[2],
        Kind::Add(CopySpec {
            from: None,
            chown: None,
            srcs: vec!["x y".into()],
            dest: "/z".into()
        })
    );
    let e = parse("FROM x\nCOPY --chmod=755 a /b")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--chmod option requires BuildKit"), "{e}");
    let e = parse("FROM x\nRUN --mount=type=cache,target=/x true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("requires BuildKit"), "{e}");
    let e = parse("FROM x\nRUN <<EOF\necho hi\nEOF\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("here-documents require BuildKit"), "{e}");
    assert!(parse("FROM x\nCOPY a").is_err());
}

#[test]
fn stages_meta_args_and_errors() {
    let d = parse("ARG BASE=bb\nFROM ${BASE} AS one\nRUN true\nFROM one\nCOPY --from=one /a /b\n")
        .unwrap();
    assert_eq!(d.meta_args.len(), 1);
    assert_eq!(d.stages.len(), 2);
    assert_eq!(d.step_count(), 5);
    let e = parse("RUN x\nFROM y").unwrap_err().to_string();
    assert!(e.contains("no build stage"), "{e}");
    let e = parse("FROM x\nFOO bar").unwrap_err().to_string();
    assert!(e.contains("line 2: unknown instruction: FOO"), "{e}");
    assert!(parse("# only a comment\n").is_err());
    assert!(parse("FROM a b").is_err());
}

#[test]
fn healthcheck_and_onbuild() {
    let k = kinds("FROM x\nHEALTHCHECK --interval=5s CMD wget -q localhost\nHEALTHCHECK NONE\nONBUILD run echo hi\n");
    assert_eq!(
        k[1],
        Kind::Healthcheck {
            flags: vec![("interval".into(), "5s".into())],
            cmd: Some(CommandForm::Shell("wget -q localhost".into()))
        }
    );
    assert_eq!(
        k[2],
        Kind::Healthcheck {
            flags: vec![],
            cmd: None
        }
    );
    assert_eq!(k[3], Kind::Onbuild("RUN echo hi".into()));
    assert!(parse("FROM x\nONBUILD ONBUILD RUN x").is_err());
    assert!(parse("FROM x\nONBUILD FROM y").is_err());
}
