//! Who may do what in a group: owner > admins > members. Pure functions of the group as the
//! registry holds it, so every rule is in one place and tested without a store.

use mqim_schemas::v1::ErrorCode;

use crate::error::ImError;
use crate::store::groups::{GroupRecord, Role};

pub(crate) fn denied(why: &str) -> ImError {
    ImError::new(ErrorCode::PermissionDenied, why)
}

pub(crate) fn precondition(why: impl Into<String>) -> ImError {
    ImError::new(ErrorCode::FailedPrecondition, why)
}

/// The caller's role; PERMISSION_DENIED if not a member.
pub fn role_of(g: &GroupRecord, user: &str) -> Result<Role, ImError> {
    g.members
        .get(user)
        .map(|m| m.role)
        .ok_or_else(|| denied("you are not a member of this group"))
}

/// Members may add others, except in a large group (admins only).
pub fn may_add(g: &GroupRecord, actor: &str) -> Result<(), ImError> {
    let role = role_of(g, actor)?;
    if g.meta.large && role < Role::Admin {
        return Err(denied(
            "only the owner and admins add members to a large group",
        ));
    }
    Ok(())
}

/// Admins remove members; only the owner removes admins; nobody removes the owner.
pub fn may_remove(g: &GroupRecord, actor: &str, target: &str) -> Result<(), ImError> {
    let role = role_of(g, actor)?;
    let target_role = role_of(g, target)
        .map_err(|_| ImError::invalid(format!("{target:?} is not a member of this group")))?;
    if target == actor {
        return Err(ImError::invalid("use groupLeave to leave a group"));
    }
    if role < Role::Admin || target_role >= role {
        return Err(denied("you may not remove this member"));
    }
    Ok(())
}

/// Any member but the owner may leave (the owner transfers or disbands first).
pub fn may_leave(g: &GroupRecord, actor: &str) -> Result<(), ImError> {
    if role_of(g, actor)? == Role::Owner {
        return Err(precondition(
            "the owner cannot leave: transfer the group (groupTransfer) or disband it first",
        ));
    }
    Ok(())
}

/// The owner and admins change the group's settings and mention everyone.
pub fn may_administer(g: &GroupRecord, actor: &str) -> Result<(), ImError> {
    if role_of(g, actor)? < Role::Admin {
        return Err(denied("only the owner and admins may do this"));
    }
    Ok(())
}

/// Only the owner changes roles, transfers and disbands.
pub fn must_own(g: &GroupRecord, actor: &str) -> Result<(), ImError> {
    if role_of(g, actor)? != Role::Owner {
        return Err(denied("only the group's owner may do this"));
    }
    Ok(())
}

/// The largest the group may grow.
pub fn capacity(large: bool, cfg: &crate::config::ImConfig) -> usize {
    if large {
        cfg.large_group_max_members
    } else {
        cfg.group_max_members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::groups::{GroupMeta, Member};

    fn group(large: bool) -> GroupRecord {
        let member = |role| Member {
            role,
            joined_at: 0,
            joined_seq: 1,
            joined_msg_id: 1,
        };
        GroupRecord {
            meta: GroupMeta {
                name: "g".into(),
                owner: "olga".into(),
                large,
                created_at: 0,
                disbanded: false,
                member_count: 4,
                version_id: 0,
                version_seq: 0,
            },
            members: [
                ("olga".to_string(), member(Role::Owner)),
                ("adam".to_string(), member(Role::Admin)),
                ("anna".to_string(), member(Role::Admin)),
                ("mia".to_string(), member(Role::Member)),
            ]
            .into(),
        }
    }

    fn code(r: Result<(), ImError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn owner_over_admins_over_members() {
        let g = group(false);
        assert_eq!(code(may_add(&g, "mia")), None);
        assert_eq!(
            code(may_add(&group(true), "mia")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(may_add(&group(true), "adam")), None);
        assert_eq!(
            code(may_add(&g, "stranger")),
            Some(ErrorCode::PermissionDenied)
        );

        assert_eq!(code(may_remove(&g, "adam", "mia")), None);
        assert_eq!(
            code(may_remove(&g, "adam", "anna")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(may_remove(&g, "olga", "anna")), None);
        assert_eq!(
            code(may_remove(&g, "mia", "adam")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(may_remove(&g, "adam", "olga")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(may_remove(&g, "olga", "nobody")),
            Some(ErrorCode::InvalidArgument)
        );

        assert_eq!(code(may_leave(&g, "mia")), None);
        assert_eq!(
            code(may_leave(&g, "olga")),
            Some(ErrorCode::FailedPrecondition)
        );
        assert_eq!(code(may_administer(&g, "anna")), None);
        assert_eq!(
            code(may_administer(&g, "mia")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(must_own(&g, "olga")), None);
        assert_eq!(
            code(must_own(&g, "adam")),
            Some(ErrorCode::PermissionDenied)
        );
    }
}
