//! CHAP secrets reach tgt, LIO and open-iscsi on standard input, never in an argument list:
//! any user of a host can read every process's arguments in `/proc/*/cmdline`. Where the
//! tool itself takes a secret only as an argument, something it reads is written instead:
//!
//! - tgt (1.0.85): `tgtadm --op new --mode account` takes `--password` only. The account is
//!   made by a short perl script that sends tgtd the request tgtadm would send on its
//!   management socket (`struct tgtadm_req` of tgt's usr/tgtadm.h, `user=U,password=P`).
//! - LIO (targetcli-fb 2.1.53): `targetcli ... set auth password=` takes it only as an
//!   argument. The ACL's configfs attribute `auth/password`, which is what targetcli writes,
//!   is written by the shell's `printf` builtin (no process, no argument list).
//! - open-iscsi (2.1.8): `iscsiadm -o update -v` takes it only as an argument. The node
//!   record's `node.session.auth.password` line is rewritten by awk, which reads the secret
//!   from its standard input, and the record is replaced in one rename.
//!
//! The scripts themselves are in the argument lists; the secret never is.

use super::LinuxStack;
use crate::backend::BackendError;

/// Where tgtd listens for its management requests (with `.0`: the default control port).
pub const TGT_SOCKET: &str = "/var/run/tgtd/socket";
/// LIO's iSCSI fabric in configfs.
pub const LIO_CONFIGFS: &str = "/sys/kernel/config/target/iscsi";
/// Where open-iscsi keeps its node records.
pub const ISCSI_NODES: &str = "/etc/iscsi/nodes";

fn words(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Makes tgt's CHAP account `user` with the secret on standard input. `socket` is tgtd's
/// management socket without its `.0` ([`TGT_SOCKET`]).
pub fn tgt_new_account_argv(user: &str, socket: &str) -> Vec<String> {
    words(&["perl", "-e", TGT_NEW_ACCOUNT, user, socket])
}

/// The request `tgtadm --lld iscsi --mode account --op new --user U --password P` sends:
/// mode 7 (account), op 0 (new), lld "iscsi", the length of all, tid -1, sid 0, lun ~0,
/// then cid, host_no, device_type, ac_dir, pack and force 0; then the parameters with a
/// trailing NUL. The answer is `err` and `len` (of all), then `len - 8` bytes of text.
const TGT_NEW_ACCOUNT: &str = r#"use strict; use warnings; use Socket;
my ($user, $base) = @ARGV;
my $secret = do { local $/; <STDIN> };
die "no secret on standard input\n" unless defined $secret && length $secret;
my $body = "user=$user,password=$secret\0";
my $req = pack("LLa64LlQQLLLLLL", 7, 0, "iscsi", 120 + length($body), -1, 0, ~0, 0, 0, 0, 0, 0, 0);
my $path = "$base.0";
socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_un($path)) or die "cannot reach tgtd at $path: $! (is tgt running?)\n";
my $msg = $req . $body;
while (length $msg) {
  my $n = syswrite($s, $msg);
  die "cannot write to tgtd: $!\n" unless defined $n;
  substr($msg, 0, $n, "");
}
my $rsp = "";
while (length($rsp) < 8) {
  my $n = sysread($s, $rsp, 8 - length($rsp), length($rsp));
  die "tgtd closed the socket\n" unless $n;
}
my ($err, $len) = unpack("LL", $rsp);
my $rest = "";
while (length($rest) < $len - 8) {
  my $n = sysread($s, $rest, $len - 8 - length($rest), length($rest));
  last unless $n;
}
exit 0 unless $err;
# tgtadm_strerror, in the order of enum tgtadm_errno (usr/tgtadm_error.h).
my @why = ("success", "unknown error", "out of memory", "can't find the driver",
  "can't find the target", "can't find the logical unit", "can't find the session",
  "can't find the connection", "can't find the binding", "this target already exists",
  "this logical unit number already exists", "this binding already exists",
  "this access control rule already exists", "this access control rule does not exist",
  "this account already exists", "can't find the account", "too many accounts",
  "invalid request");
die sprintf("tgtd: %s (error %d)\n", $why[$err] // "error", $err);
"#;

/// Sets the CHAP account of initiator `initiator`'s ACL on LIO target `iqn` (its TPG 1),
/// the secret on standard input. `root` is [`LIO_CONFIGFS`].
pub fn lio_auth_argv(root: &str, iqn: &str, initiator: &str, user: &str) -> Vec<String> {
    words(&["sh", "-c", LIO_AUTH, "sh", root, iqn, initiator, user])
}

const LIO_AUTH: &str = r#"d=$1/$2/tpgt_1/acls/$3/auth
[ -d "$d" ] || { echo "no ACL for $3 on target $2: $d does not exist" >&2; exit 1; }
s=$(cat) && [ -n "$s" ] || { echo "no secret on standard input" >&2; exit 1; }
printf %s "$4" > "$d/userid" && printf %s "$s" > "$d/password""#;

/// Sets `node.session.auth.password` in the node record of `iqn` at `portal` (`ip:port`),
/// the secret on standard input. `root` is [`ISCSI_NODES`]; a record is
/// `<root>/<iqn>/<ip>,<port>,<tpgt>/<iface>` (`default`), or that path as a file in older
/// versions.
pub fn iscsi_password_argv(root: &str, iqn: &str, portal: &str) -> Vec<String> {
    words(&["sh", "-c", ISCSI_PASSWORD, "sh", root, iqn, portal])
}

const ISCSI_PASSWORD: &str = r#"umask 077
s=$(cat) && [ -n "$s" ] || { echo "no secret on standard input" >&2; exit 1; }
ip=${3%:*}; port=${3##*:}; n=0
for r in "$1/$2/$ip,$port,"*; do
  [ -d "$r" ] && r=$r/default
  [ -f "$r" ] || continue
  printf '%s\n' "$s" | awk '
    BEGIN { if ((getline s < "/dev/stdin") <= 0) { bad = 1; exit } ; line = "node.session.auth.password = " s }
    /^node\.session\.auth\.password[ \t]*=/ { if (!done) print line; done = 1; next }
    /^# END RECORD/ { if (!done) print line; done = 1 }
    { print }
    END { if (bad) exit 2; if (!done) print line }' "$r" > "$r.vmt-new" && mv -f -- "$r.vmt-new" "$r" || { rm -f -- "$r.vmt-new"; exit 1; }
  n=$((n+1))
done
[ "$n" -gt 0 ] || { echo "no node record of $2 at $3 under $1 (discovery makes it)" >&2; exit 1; }"#;

impl LinuxStack {
    /// Runs `argv` on `host` with `secret` on its standard input. A failure never shows the
    /// secret (should a tool echo it).
    pub(super) fn run_with_secret(
        &self,
        host: &str,
        argv: &[String],
        secret: &str,
    ) -> Result<String, BackendError> {
        match self.transport.run_with_input(
            host,
            argv,
            Some(secret.as_bytes()),
            super::COMMAND_TIMEOUT,
        ) {
            Ok(o) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(mut e) => {
                e.command = e.command.replace(secret, "(sensitive)");
                e.stderr = e.stderr.replace(secret, "(sensitive)");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::transport::{Local, Transport};
    use std::io::{Read, Write};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef01234567";

    fn run(argv: &[String], input: &str) -> Result<String, String> {
        Local { netns: None }
            .run_with_input(
                "here",
                argv,
                Some(input.as_bytes()),
                Duration::from_secs(20),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| format!("{}: {}", e.status, e.stderr))
    }

    /// The perl script against a stand-in for tgtd on a socket of its own: the request is
    /// the one tgtadm sends, and tgtd's refusal is reported in its words.
    #[test]
    fn tgt_account_is_made_over_tgtds_socket() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("socket.0")).unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for err in [0u32, 14] {
                let (mut c, _) = listener.accept().unwrap();
                let mut head = [0u8; 120];
                c.read_exact(&mut head).unwrap();
                let len = u32::from_ne_bytes(head[72..76].try_into().unwrap()) as usize;
                let mut body = vec![0u8; len - 120];
                c.read_exact(&mut body).unwrap();
                seen.push((head, body));
                c.write_all(&err.to_ne_bytes()).unwrap();
                c.write_all(&8u32.to_ne_bytes()).unwrap();
            }
            seen
        });
        let argv = tgt_new_account_argv("vmt.c.base.node01", base.to_str().unwrap());
        assert_eq!(run(&argv, SECRET), Ok(String::new()));
        let refused = run(&argv, SECRET).unwrap_err();
        assert!(
            refused.contains("tgtd: this account already exists (error 14)"),
            "{refused}"
        );
        let seen = server.join().unwrap();
        let (head, body) = &seen[0];
        let u32_at = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(4)), (7, 0), "mode account, op new");
        assert_eq!(&head[8..14], b"iscsi\0");
        assert_eq!(u32_at(76), u32::MAX, "tid -1");
        assert_eq!(&head[88..96], &[0xff; 8], "lun ~0");
        assert!(head[96..120].iter().all(|b| *b == 0));
        assert_eq!(
            body.as_slice(),
            format!("user=vmt.c.base.node01,password={SECRET}\0").as_bytes()
        );
        assert!(run(&argv, "").unwrap_err().contains("no secret"));
    }

    #[test]
    fn lio_auth_is_written_to_the_acls_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let auth = dir.path().join("iqn.x:y/tpgt_1/acls/iqn.a:b/auth");
        let argv = lio_auth_argv(root, "iqn.x:y", "iqn.a:b", "vmt.u");
        let missing = run(&argv, SECRET).unwrap_err();
        assert!(
            missing.contains("no ACL for iqn.a:b on target iqn.x:y"),
            "{missing}"
        );
        std::fs::create_dir_all(&auth).unwrap();
        run(&argv, SECRET).unwrap();
        // Exactly the value, no newline: the kernel keeps what is written.
        assert_eq!(
            std::fs::read_to_string(auth.join("password")).unwrap(),
            SECRET
        );
        assert_eq!(
            std::fs::read_to_string(auth.join("userid")).unwrap(),
            "vmt.u"
        );
    }

    /// A node record as open-iscsi 2.1.8 writes it (abridged), and the older layout where
    /// the record is a file.
    #[test]
    fn iscsi_password_replaces_the_records_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let record = dir.path().join("iqn.x:y/10.0.0.1,3260,1/default");
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        let text = "# BEGIN RECORD 2.1.8\nnode.name = iqn.x:y\nnode.session.auth.authmethod = CHAP\nnode.session.auth.username = vmt.u\nnode.session.auth.password = placeholder\nnode.conn[0].address = 10.0.0.1\n# END RECORD\n";
        std::fs::write(&record, text).unwrap();
        let argv = iscsi_password_argv(root, "iqn.x:y", "10.0.0.1:3260");
        run(&argv, SECRET).unwrap();
        let now = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            now,
            text.replace("= placeholder", &format!("= {SECRET}")),
            "one line changed"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&record).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "readable by its owner only");
        // No password line yet: it goes before the end marker.
        std::fs::write(
            &record,
            text.replace("node.session.auth.password = placeholder\n", ""),
        )
        .unwrap();
        run(&argv, SECRET).unwrap();
        let now = std::fs::read_to_string(&record).unwrap();
        assert!(
            now.ends_with(&format!(
                "node.session.auth.password = {SECRET}\n# END RECORD\n"
            )),
            "{now}"
        );
        // The older layout, and a portal with no record.
        std::fs::remove_dir_all(dir.path().join("iqn.x:y")).unwrap();
        std::fs::create_dir_all(dir.path().join("iqn.x:y")).unwrap();
        let flat = dir.path().join("iqn.x:y/10.0.0.1,3260,1");
        std::fs::write(&flat, text).unwrap();
        run(&argv, SECRET).unwrap();
        assert!(std::fs::read_to_string(&flat).unwrap().contains(SECRET));
        let none = iscsi_password_argv(root, "iqn.x:y", "10.0.0.2:3260");
        let e = run(&none, SECRET).unwrap_err();
        assert!(
            e.contains("no node record of iqn.x:y at 10.0.0.2:3260"),
            "{e}"
        );
        assert!(!dir.path().join("iqn.x:y/10.0.0.1,3260,1.vmt-new").exists());
    }
}
