//! The CI applications' built-in templates: Jenkins and Sonatype Nexus Repository as staging
//! environments on their restored volumes (engine `jenkins`, `nexus`).
//!
//! Each is a YAML template compiled into the binary and rendered by the same code as a user's
//! `template` ([`crate::staging::render::template`]): the same placeholders, every document
//! checked against its Kubernetes type, snapstage's labels added, the restricted Pod Security
//! Standard of the namespace. A user `template` replaces it (for a custom image with plugins,
//! say); the placeholders then carry the application's port, user and data directory.
//!
//! | engine | objects | mounts the PVC at | user | readiness (HTTP) |
//! | --- | --- | --- | --- | --- |
//! | `jenkins` | ConfigMap `jenkins-quiet-start`, Service `jenkins` (8080 http, 50000 agents), StatefulSet `jenkins` | `/var/jenkins_home` (`JENKINS_HOME`) | 1000 | `GET /login` |
//! | `nexus` | Service `nexus` (8081), StatefulSet `nexus` | `/nexus-data` | 200 | `GET /service/rest/v1/status/writable` |
//!
//! Jenkins starts in quiet-down (an init script, see `apps/jenkins.yaml`): a copy of a
//! production controller runs no job until someone cancels the quiet-down.

use crate::error::Result;
use crate::staging::engine::Engine;
use crate::staging::params::template::TemplateText;

/// The Jenkins controller's template.
pub const JENKINS: &str = include_str!("apps/jenkins.yaml");
/// Nexus Repository's template.
pub const NEXUS: &str = include_str!("apps/nexus.yaml");

/// The built-in template of an application engine; `None` for a database (snapstage's own
/// Service and StatefulSet).
pub fn template(engine: Engine) -> Result<Option<TemplateText>> {
    let text = match engine {
        Engine::Jenkins => JENKINS,
        Engine::Nexus => NEXUS,
        Engine::Postgresql | Engine::Mysql | Engine::Mongodb => return Ok(None),
    };
    TemplateText::new(text.to_string(), format!("built-in {engine} template")).map(Some)
}
