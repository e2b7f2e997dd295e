#![no_main]
//! `docker build`'s Dockerfile: parsed as the classic builder does, then every
//! instruction's text expanded by the argument lexer as a build step would.

use berth_dockerfile::dockerfile;
use berth_dockerfile::shell_lex::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(df) = dockerfile::parse(text) else {
        return;
    };
    assert!(df.step_count() >= df.stages.len());
    let env = vec!["A=1".to_string(), "E=".to_string(), "SP=x y".to_string()];
    let lexer = Lexer {
        escape: df.escape,
        env: &env,
    };
    let all = df.meta_args.iter().chain(
        df.stages
            .iter()
            .flat_map(|s| std::iter::once(&s.from).chain(&s.instructions)),
    );
    for i in all {
        let _ = lexer.word(&i.original);
        let _ = lexer.words(&i.original);
    }
});
