//! `lab exercise`: a fault of the catalogue broken without naming it, for a learner to
//! find from its symptom and fix with their own hands. The exercise is recorded in
//! `STATE/exercise.json` (the fault stays recorded in `faults.json` as any broken
//! fault is, so that `lab restore` still undoes it). Whether it is solved is for the
//! conformance tests the fault names to say; the CLI runs them and, when they pass,
//! calls `solved`, which forgets both records: the learner's fix is what the lab has
//! now. Giving up restores the fault as `lab restore` does.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::faults::{Restore, Restored};
use super::{Lab, LabError, Silent};
use crate::faults::{self, Fault, CATALOGUE};
use crate::plan::Stage;
use crate::topology::Topology;

/// The exercise in progress, as `STATE/exercise.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exercise {
    /// The fault broken: the answer, which the CLI shows only once it is over.
    pub fault: String,
    /// What a user of the cluster notices.
    pub symptom: String,
    /// The chapter it belongs to: the hint.
    pub stage: Stage,
    /// What was broken and where, once the break chose its nodes: part of the answer.
    #[serde(default)]
    pub summary: Option<String>,
    /// When it started, in seconds since the epoch.
    pub since: u64,
}

impl Exercise {
    pub fn fault(&self) -> &'static Fault {
        faults::find(&self.fault).expect("an exercise records a fault of the catalogue")
    }
}

/// The tests that say whether an exercise on `fault` is solved: those it names, but
/// the failover drills (a drill stops parts of the lab itself and takes minutes, which
/// is no way to tell a learner whether the fix worked).
pub fn checks(fault: &Fault) -> Vec<&'static str> {
    fault.breaks.iter().copied().filter(|test| !test.starts_with("failover::")).collect()
}

/// The faults an exercise may pick in `topology`: those that apply to it and have
/// checks that are not drills.
pub fn exercisable(topology: &Topology) -> Vec<&'static Fault> {
    CATALOGUE.iter().filter(|fault| fault.targets(topology, None).is_ok() && !checks(fault).is_empty()).collect()
}

impl Lab {
    /// The exercise in progress, if any.
    pub fn exercise(&self) -> Result<Option<Exercise>, LabError> {
        let path = self.state.exercise();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| LabError::Record { path, message: error.to_string() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(LabError::Record { path, message: error.to_string() }),
        }
    }

    /// Breaks `fault`, or one of the exercisable faults picked by `seed`, without
    /// saying which, and records the exercise. Refused while an exercise or any other
    /// fault is in force: the symptom must be this fault's alone.
    pub fn start_exercise(&self, fault: Option<&str>, seed: u64) -> Result<Exercise, LabError> {
        if !self.state.topology_record().exists() {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        }
        if self.exercise()?.is_some() {
            return Err(LabError::ExerciseInProgress);
        }
        let in_force = self.faults_in_force()?;
        if !in_force.is_empty() {
            let names: Vec<&str> = in_force.iter().map(|record| record.fault.as_str()).collect();
            return Err(LabError::FaultsInForce { faults: names.join(", ") });
        }
        let fault = match fault {
            Some(name) => {
                let fault = faults::find(name)?;
                fault.targets(&self.topology, None)?;
                if checks(fault).is_empty() {
                    return Err(LabError::NotAnExercise { fault: fault.name });
                }
                fault
            }
            None => {
                let candidates = exercisable(&self.topology);
                let index = usize::try_from(seed % candidates.len().max(1) as u64).unwrap_or_default();
                *candidates.get(index).ok_or(LabError::NoExercisableFault)?
            }
        };
        let exercise = Exercise {
            fault: fault.name.to_string(),
            symptom: fault.symptom.to_string(),
            stage: fault.stage,
            summary: None,
            since: SystemTime::now().duration_since(UNIX_EPOCH).map(|time| time.as_secs()).unwrap_or_default(),
        };
        // Recorded before the break, so that an interrupted start is given up like a
        // whole one. The break's own progress lines name the fault: they are not shown.
        self.record_exercise(Some(&exercise))?;
        let broken = self.break_fault(fault.name, None, &Silent)?;
        let exercise = Exercise { summary: Some(broken.summary), ..exercise };
        self.record_exercise(Some(&exercise))?;
        Ok(exercise)
    }

    /// The exercise in progress, or the error that there is none.
    pub fn current_exercise(&self) -> Result<Exercise, LabError> {
        if !self.state.topology_record().exists() {
            return Err(LabError::NoLab { state_dir: self.paths.state_dir.clone() });
        }
        self.exercise()?.ok_or(LabError::NoExercise)
    }

    /// The learner fixed it (its tests pass): forgets the exercise and its fault, whose
    /// cure is now the learner's own.
    pub fn solved(&self, exercise: &Exercise) -> Result<(), LabError> {
        let kept: Vec<_> =
            self.faults_in_force()?.into_iter().filter(|record| record.fault != exercise.fault).collect();
        self.record_faults(&kept)?;
        self.record_exercise(None)
    }

    /// Restores the exercise's fault as `lab restore FAULT` does (or, when the learner
    /// took it out of force some other way, converges the lab) and ends the exercise.
    pub fn give_up(&self, reporter: &dyn super::Reporter) -> Result<(Exercise, Restored), LabError> {
        let exercise = self.current_exercise()?;
        let in_force = self.faults_in_force()?.iter().any(|record| record.fault == exercise.fault);
        let which = if in_force { Restore::One(&exercise.fault) } else { Restore::All };
        let restored = self.restore(which, reporter)?;
        self.record_exercise(None)?;
        Ok((exercise, restored))
    }

    fn record_exercise(&self, exercise: Option<&Exercise>) -> Result<(), LabError> {
        let path = self.state.exercise();
        match exercise {
            Some(exercise) => {
                let json = serde_json::to_vec_pretty(exercise).expect("an exercise serializes");
                crate::system::write_atomically(&path, &json, 0o644).map_err(|source| LabError::Write { path, source })
            }
            None => match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(LabError::Write { path, source: error })
                }
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(file: &str) -> Topology {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        Topology::load(&path).expect("the shipped topology loads").topology
    }

    #[test]
    fn exercises_are_checks_that_apply_to_the_topology_never_drills() {
        let default = exercisable(&topology("lab.toml"));
        assert!(default.len() >= 20, "{} exercisable faults", default.len());
        assert!(default.iter().all(|fault| checks(fault).iter().all(|test| !test.starts_with("failover::"))));
        assert!(!default.iter().any(|fault| fault.name == "dns-one-replica"), "only a drill sees it");
        for name in ["kubelet-read-only-port", "kubeconfig-world-readable", "etcd-member-stopped"] {
            assert!(default.iter().any(|fault| fault.name == name), "{name} is an exercise");
        }
        let minimal = exercisable(&topology("examples/minimal.toml"));
        assert!(!minimal.is_empty());
        let minimal_topology = topology("examples/minimal.toml");
        assert!(minimal.iter().all(|fault| fault.targets(&minimal_topology, None).is_ok()));
        assert!(minimal.len() < default.len(), "a one-master lab has fewer faults to break");
    }
}
