//! The service's own DSPy code (`Module::python`), imported from its
//! project directory: outputs checked against the Rust signature, scenario
//! 45 (a module that will not import, build or run: typed errors with the
//! traceback, the worker serving on), import paths outside the project
//! refused, and the project's `requirements.txt` installed as a layer.

use std::path::PathBuf;
use std::time::Duration;

use dspex::{Category, Error, ExecuteOptions, LmConfig, ModeSetting, Module, Signature};
use dspex_protocol::{Command, ErrorKind};
use dspex_testkit::TestPool;
use dspex_tests::service::{Service, config};
use serde_json::json;

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/project")
}

fn shout() -> Signature {
    Signature::parse("question: str -> answer: str, length: int").unwrap()
}

async fn service() -> Service {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = 1;
    config.python.project = Some(project());
    let service = Service::start(config).await.unwrap();
    service.dspex.configure_lm(LmConfig::dummy()).await.unwrap();
    service
}

/// The Python error of `error`: its kind, message and traceback.
fn python(error: &Error) -> (ErrorKind, &str, &str) {
    match error {
        Error::Python {
            kind,
            message,
            traceback,
        } => (kind.clone(), message, traceback.as_deref().unwrap_or("")),
        other => panic!("not a Python error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_module_runs_with_its_constructor_arguments() {
    let service = service().await;
    let dspex = &service.dspex;
    let module = Module::python("svc.programs:Shout").kwargs(json!({"prefix": "loud"}));
    dspex
        .create_program("shout", shout(), module)
        .await
        .unwrap();
    let prediction = dspex
        .execute(
            "shout",
            json!({"question": "hello"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        prediction
            .get::<String>("answer")
            .unwrap()
            .starts_with("loud: answer: ")
    );
    assert_eq!(prediction.get::<i64>("length").unwrap(), 5);
    assert!(prediction.usage.total().total_tokens > 0);
    // Outputs are held to the signature the Rust side declares.
    dspex
        .create_program("wrong", shout(), Module::python("svc.programs:WrongType"))
        .await
        .unwrap();
    let error = dspex
        .execute(
            "wrong",
            json!({"question": "hi"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap_err();
    // (The worker converts outputs to the declared types, as it does an
    // LM's, and says which field would not convert.)
    assert!(
        matches!(error.category(), Category::Lm | Category::Validation),
        "{error}"
    );
    assert!(error.to_string().contains("length"), "{error}");
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_45_a_module_that_will_not_import_build_or_run() {
    let service = service().await;
    let dspex = &service.dspex;
    let pid = service.pool().status().pids()[0];
    // A syntax error, and a constructor that raises: refused when created.
    for (path, stage, words) in [
        ("svc.syntax_error:Anything", "import", "SyntaxError"),
        ("svc.programs:BrokenInit", "construct", "failed on purpose"),
    ] {
        let error = dspex
            .create_program("bad", shout(), Module::python(path))
            .await
            .unwrap_err();
        let (kind, message, traceback) = python(&error);
        assert_eq!(kind, ErrorKind::ModuleImportError, "{path}: {error}");
        assert!(message.contains(path), "{path}: {message}");
        assert!(
            traceback.contains(words) && traceback.contains("Traceback"),
            "{path} ({stage}): {traceback}"
        );
    }
    // `forward` raising: the call fails with the traceback.
    dspex
        .create_program(
            "raises",
            shout(),
            Module::python("svc.programs:BrokenForward"),
        )
        .await
        .unwrap();
    let error = dspex
        .execute(
            "raises",
            json!({"question": "q"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap_err();
    let (kind, message, traceback) = python(&error);
    assert_eq!(kind, ErrorKind::PythonException, "{error}");
    assert!(message.contains("forward failed on purpose"), "{message}");
    assert!(traceback.contains("programs.py"), "{traceback}");
    // The worker serves on: nothing restarted, the good module still runs.
    dspex
        .create_program("shout", shout(), Module::python("svc.programs:Shout"))
        .await
        .unwrap();
    dspex
        .execute(
            "shout",
            json!({"question": "still here"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    let status = service.pool().status();
    assert_eq!((status.restarts, status.pids()), (0, vec![pid]));
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_project_directory_can_be_imported_from() {
    let service = service().await;
    let dspex = &service.dspex;
    for path in ["json:loads", "os:system", "subprocess:Popen"] {
        let error = dspex
            .create_program("outside", shout(), Module::python(path))
            .await
            .unwrap_err();
        let (kind, message, _) = python(&error);
        assert_eq!(kind, ErrorKind::ModuleImportError, "{path}: {error}");
        assert!(message.contains("project directory"), "{path}: {message}");
    }
    // A path that is not `package.module:Class` never leaves Rust.
    let error = dspex
        .create_program("bad", shout(), Module::python("../etc/passwd"))
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Validation);
    service.finish().await;

    // Without a project, python modules are off.
    let mut plain = config(ModeSetting::Pool);
    plain.pool_size = 1;
    let service = Service::start(plain).await.unwrap();
    let error = service
        .dspex
        .create_program("shout", shout(), Module::python("svc.programs:Shout"))
        .await
        .unwrap_err();
    match &error {
        Error::Validation { what, message, .. } => {
            assert_eq!(*what, "module");
            assert!(message.contains("project directory"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    service.finish().await;
}

/// Writes a one-module wheel (`dspex_layer_probe`) into `dir`.
fn write_wheel(dir: &std::path::Path) -> String {
    let name = "dspex_layer_probe-1.0-py3-none-any.whl";
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    wheel.writestr("dspex_layer_probe/__init__.py", "VALUE = 'from the layer'\n")
    info = "dspex_layer_probe-1.0.dist-info/"
    wheel.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: dspex-layer-probe\nVersion: 1.0\n")
    wheel.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: dspex-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    wheel.writestr(info + "RECORD", "")
"#;
    let python = dspex_testkit::managed_python().unwrap();
    let status = std::process::Command::new(&python.interpreter)
        .arg("-c")
        .arg(script)
        .arg(dir.join(name))
        .status()
        .unwrap();
    assert!(status.success());
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_projects_requirements_are_installed_as_a_layer() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::create_dir_all(root.join("wheels")).unwrap();
    std::fs::create_dir_all(root.join("layered")).unwrap();
    let wheel = write_wheel(&root.join("wheels"));
    // A line of its own makes this file, and so its layer, new every run.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    std::fs::write(
        root.join("requirements.txt"),
        format!("# run {nonce}\n./wheels/{wheel}\n"),
    )
    .unwrap();
    std::fs::write(root.join("layered/__init__.py"), "").unwrap();
    std::fs::write(
        root.join("layered/probe.py"),
        "import dspy\nimport dspex_layer_probe\n\n\nclass Probe(dspy.Module):\n    \
         def forward(self, question):\n        \
         return dspy.Prediction(answer=dspex_layer_probe.VALUE)\n",
    )
    .unwrap();
    let pool = TestPool::builder()
        .with(|c| c.size = 1)
        .eager_dspy()
        .project(root)
        .start()
        .await
        .unwrap();
    pool.wait_status(Duration::from_secs(60), |s| s.idle == 1)
        .await
        .unwrap();
    let definition = dspex_protocol::ProgramDefinition {
        program_id: "probe".into(),
        signature: Signature::parse("question -> answer").unwrap().to_spec(),
        module: "python".into(),
        module_args: json!({"path": "layered.probe:Probe"})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    let options = dspex::bridge::pool::RequestOptions::default;
    pool.pool()
        .call(Command::ConfigureLm(LmConfig::dummy()), options())
        .await
        .unwrap();
    pool.pool()
        .call(Command::CreateProgram(definition), options())
        .await
        .unwrap();
    let reply = pool
        .command(
            "execute_program",
            json!({"program_id": "probe", "inputs": {"question": "q"}}),
        )
        .await
        .unwrap();
    assert_eq!(reply["outputs"]["answer"], "from the layer");
    let layer = dspex_testkit::managed_python_for(Some(root.to_path_buf()))
        .unwrap()
        .layer
        .expect("a layer");
    assert!(layer.join("dspex_layer_probe/__init__.py").is_file());
    pool.finish().await;
    std::fs::remove_dir_all(layer).unwrap();
}

/// A module's Python log record is emitted on the Rust side under the
/// caller's span (with the `dspex.call` span naming the worker and pid).
#[tokio::test(flavor = "multi_thread")]
async fn a_modules_log_records_are_folded_under_the_callers_span() {
    use tracing::Instrument;
    let logs = dspex_tests::logs::capture("info");
    let service = service().await;
    let dspex = &service.dspex;
    dspex
        .create_program("chatty", shout(), Module::python("svc.programs:Chatty"))
        .await
        .unwrap();
    dspex
        .execute(
            "chatty",
            json!({"question": "the meaning of life"}),
            ExecuteOptions::default(),
        )
        .instrument(tracing::info_span!("http.request", request_id = "req-4242"))
        .await
        .unwrap();
    let logs = logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let line = logs
        .lines()
        .find(|line| {
            line.contains("thinking hard about the meaning of life")
                && line.contains("dspex::python")
        })
        .unwrap_or_else(|| panic!("the record was not emitted on the Rust side:\n{logs}"));
    assert!(line.contains("request_id=\"req-4242\""), "{line}");
    assert!(line.contains("dspex.call{program=\"chatty\""), "{line}");
    assert!(line.contains("pid="), "{line}");
    assert!(line.contains("logger=\"svc.chatty\""), "{line}");
    assert!(line.contains("WARN"), "{line}");
}
