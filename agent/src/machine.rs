//! The per-task state machine: one pure step from (desired state, last reported status, what the driver sees) to
//! one driver action and the status to report. The supervisor calls it until it answers `Wait`; each call advances
//! the task at most one state, as swarmkit's `Do(task, controller)` does.

use swarm_specs::task::TaskState;

use crate::driver::Observed;
use crate::driver::TaskHealth;

/// What the supervisor should do with the driver next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until something changes (an event, a new desired state).
    Wait,
    Prepare,
    Start,
    /// Send the stop signal, wait for the grace period, then kill.
    Stop,
    /// Remove the container or process state.
    Remove,
    /// Only report the new status.
    Report,
}

/// The outcome of one step: the action, and the status to report afterwards (if it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// The state to report once the action succeeded, with its message and error.
    pub report: Option<Report>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub state: TaskState,
    pub message: String,
    pub err: Option<String>,
    pub exit_code: Option<i64>,
}

fn report(state: TaskState, message: &str) -> Option<Report> {
    Some(Report {
        state,
        message: message.to_string(),
        err: None,
        exit_code: None,
    })
}

/// The task's process exited 0: it is complete.
fn finished() -> Step {
    Step {
        action: Action::Report,
        report: Some(Report {
            state: TaskState::Complete,
            message: "finished".into(),
            err: None,
            exit_code: Some(0),
        }),
    }
}

fn failed(message: &str, err: String, exit_code: Option<i64>) -> Option<Report> {
    Some(Report {
        state: TaskState::Failed,
        message: message.to_string(),
        err: Some(err),
        exit_code,
    })
}

/// The next step for a task whose last reported state is `current`, which the orchestrator wants in `desired`,
/// and which the driver currently sees as `observed`.
pub fn step(desired: TaskState, current: TaskState, observed: &Observed) -> Step {
    let go = |action, report| Step { action, report };
    // Finished tasks only need their runtime object cleaned up once the orchestrator says so.
    if current.is_terminal() {
        return match (desired >= TaskState::Remove, observed) {
            (true, Observed::Missing) => go(Action::Wait, None),
            (true, _) => go(Action::Remove, None),
            (false, Observed::Running { .. }) => go(Action::Stop, None),
            (false, _) => go(Action::Wait, None),
        };
    }
    // The orchestrator wants the task gone: stop it, report Shutdown (before it ever ran, just report it).
    if desired >= TaskState::Shutdown {
        return match observed {
            Observed::Running { .. } => go(Action::Stop, report(TaskState::Shutdown, "shutdown")),
            Observed::Exited { code } => Step {
                action: Action::Report,
                report: Some(Report {
                    state: TaskState::Shutdown,
                    message: "shutdown".into(),
                    err: None,
                    exit_code: Some(*code),
                }),
            },
            Observed::Created | Observed::Missing => go(Action::Report, report(TaskState::Shutdown, "shutdown")),
        };
    }
    match current {
        TaskState::New | TaskState::Pending | TaskState::Assigned => {
            go(Action::Report, report(TaskState::Accepted, "accepted"))
        }
        TaskState::Accepted => go(Action::Report, report(TaskState::Preparing, "preparing")),
        TaskState::Preparing => go(Action::Prepare, report(TaskState::Ready, "prepared")),
        // The orchestrator holds a task at Ready until it may start (e.g. start-first updates, jobs).
        TaskState::Ready if desired < TaskState::Running => go(Action::Wait, None),
        TaskState::Ready => match observed {
            Observed::Missing => go(Action::Prepare, None),
            _ => go(Action::Start, report(TaskState::Starting, "starting")),
        },
        TaskState::Starting => match observed {
            Observed::Running {
                health: TaskHealth::None | TaskHealth::Healthy,
            } => go(Action::Report, report(TaskState::Running, "started")),
            // Has a healthcheck that has not passed yet: the task is Starting until it is healthy.
            Observed::Running {
                health: TaskHealth::Starting,
            } => go(Action::Wait, None),
            // Failed its healthcheck before it ever passed it (as Swarm does: the task fails).
            Observed::Running {
                health: TaskHealth::Unhealthy,
            } => go(
                Action::Stop,
                failed(
                    "unhealthy",
                    "task: unhealthy container (its healthcheck failed)".into(),
                    None,
                ),
            ),
            Observed::Exited { code: 0 } => finished(),
            Observed::Exited { code } => go(
                Action::Report,
                failed("started", format!("task: non-zero exit ({code})"), Some(*code)),
            ),
            Observed::Created => go(Action::Start, None),
            Observed::Missing => go(
                Action::Report,
                failed(
                    "starting",
                    "task: the container or process disappeared before it ran".into(),
                    None,
                ),
            ),
        },
        TaskState::Running => match observed {
            Observed::Running {
                health: TaskHealth::Unhealthy,
            } => go(
                Action::Stop,
                failed(
                    "unhealthy",
                    "task: unhealthy container (its healthcheck failed)".into(),
                    None,
                ),
            ),
            Observed::Running { .. } | Observed::Created => go(Action::Wait, None),
            Observed::Exited { code: 0 } => finished(),
            Observed::Exited { code } => go(
                Action::Report,
                failed("exited", format!("task: non-zero exit ({code})"), Some(*code)),
            ),
            Observed::Missing => go(
                Action::Report,
                failed(
                    "removed",
                    "task: the container was removed behind swarm's back".into(),
                    None,
                ),
            ),
        },
        // Terminal states were handled above.
        _ => go(Action::Wait, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the machine the way the supervisor does, with a runtime that obeys: returns the reported states.
    fn drive(desired: TaskState, mut observed: Observed, steps: usize) -> Vec<TaskState> {
        let mut current = TaskState::Assigned;
        let mut reported = Vec::new();
        for _ in 0..steps {
            let s = step(desired, current, &observed);
            match s.action {
                Action::Wait => break,
                Action::Prepare => observed = Observed::Created,
                Action::Start => {
                    observed = Observed::Running {
                        health: TaskHealth::None,
                    }
                }
                Action::Stop => observed = Observed::Exited { code: 0 },
                Action::Remove => observed = Observed::Missing,
                Action::Report => {}
            }
            if let Some(r) = s.report {
                current = r.state;
                reported.push(r.state);
            }
        }
        reported
    }

    #[test]
    fn an_assigned_task_walks_to_running_one_state_per_step() {
        use TaskState::*;
        assert_eq!(
            drive(Running, Observed::Missing, 20),
            vec![Accepted, Preparing, Ready, Starting, Running]
        );
    }

    #[test]
    fn a_task_held_at_ready_waits_for_the_go() {
        use TaskState::*;
        assert_eq!(drive(Ready, Observed::Missing, 20), vec![Accepted, Preparing, Ready]);
    }

    #[test]
    fn exits_are_complete_or_failed_with_the_code() {
        let s = step(TaskState::Running, TaskState::Running, &Observed::Exited { code: 3 });
        let r = s.report.unwrap();
        assert_eq!((r.state, r.exit_code), (TaskState::Failed, Some(3)));
        assert_eq!(r.err.as_deref(), Some("task: non-zero exit (3)"));
        let s = step(TaskState::Running, TaskState::Running, &Observed::Exited { code: 0 });
        assert_eq!(s.report.unwrap().state, TaskState::Complete);
    }

    #[test]
    fn removal_behind_our_back_fails_the_task() {
        let s = step(TaskState::Running, TaskState::Running, &Observed::Missing);
        let r = s.report.unwrap();
        assert_eq!(r.state, TaskState::Failed);
        assert!(r.err.unwrap().contains("removed"));
    }

    #[test]
    fn starting_waits_for_health_and_unhealthy_running_tasks_fail() {
        let waiting = step(
            TaskState::Running,
            TaskState::Starting,
            &Observed::Running {
                health: TaskHealth::Starting,
            },
        );
        assert_eq!(waiting.action, Action::Wait);
        let never_healthy = step(
            TaskState::Running,
            TaskState::Starting,
            &Observed::Running {
                health: TaskHealth::Unhealthy,
            },
        );
        assert_eq!(never_healthy.action, Action::Stop);
        assert_eq!(never_healthy.report.unwrap().state, TaskState::Failed);
        let healthy = step(
            TaskState::Running,
            TaskState::Starting,
            &Observed::Running {
                health: TaskHealth::Healthy,
            },
        );
        assert_eq!(healthy.report.unwrap().state, TaskState::Running);
        let sick = step(
            TaskState::Running,
            TaskState::Running,
            &Observed::Running {
                health: TaskHealth::Unhealthy,
            },
        );
        assert_eq!(sick.action, Action::Stop);
        assert_eq!(sick.report.unwrap().state, TaskState::Failed);
    }

    #[test]
    fn shutdown_stops_a_running_task_and_remove_cleans_up() {
        let s = step(
            TaskState::Shutdown,
            TaskState::Running,
            &Observed::Running {
                health: TaskHealth::None,
            },
        );
        assert_eq!((s.action, s.report.unwrap().state), (Action::Stop, TaskState::Shutdown));
        let s = step(TaskState::Remove, TaskState::Shutdown, &Observed::Exited { code: 0 });
        assert_eq!(s.action, Action::Remove);
        let s = step(TaskState::Remove, TaskState::Shutdown, &Observed::Missing);
        assert_eq!(s.action, Action::Wait);
    }

    #[test]
    fn the_machine_never_reports_going_backwards_and_always_settles() {
        // Every combination of desired, current and observed: the reported state is never below the current one,
        // and following the machine with an obedient runtime ends in Wait within a few steps.
        let observations = [
            Observed::Created,
            Observed::Running {
                health: TaskHealth::None,
            },
            Observed::Running {
                health: TaskHealth::Starting,
            },
            Observed::Running {
                health: TaskHealth::Healthy,
            },
            Observed::Running {
                health: TaskHealth::Unhealthy,
            },
            Observed::Exited { code: 0 },
            Observed::Exited { code: 137 },
            Observed::Missing,
        ];
        for desired in TaskState::ALL {
            for current in TaskState::ALL {
                for observed in &observations {
                    let s = step(desired, current, observed);
                    if let Some(r) = &s.report {
                        assert!(
                            r.state >= current,
                            "{desired:?}/{current:?}/{observed:?} reported {:?}",
                            r.state
                        );
                    }
                }
            }
            let reported = drive(desired, Observed::Missing, 50);
            assert!(reported.len() < 50, "{desired:?} did not settle: {reported:?}");
        }
    }
}
