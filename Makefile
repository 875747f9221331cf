# bsync build entry points. `make` gives one fully static binary, ./bsync,
# that can be copied onto any x86_64 Linux (rescue systems included).
#
#   make          static release binary ./bsync (x86_64-unknown-linux-musl)
#   make test     cargo fmt --check, tests/layers.py (no import circles, no
#                 upward imports, no file over 500 lines of code), clippy
#                 with -D warnings, the fuzz crate's
#                 tests (every file of fuzz/corpus/ replayed through its
#                 target's check), cargo test
#                 (tests/ssh.rs runs against an sshd when BSYNC_TEST_SSH is set:
#                 eval "$(tests/sshd.sh start)" starts one on loopback)
#   make test-fault  deterministic fault injection, a few minutes: a relay
#                 that flips a bit in every field of every frame type, drops,
#                 duplicates, reorders, truncates, cuts, resets and stalls
#                 frames (tests/fault.rs); the roles in-process over socket
#                 pairs with a strict I/O shim (short counts, EINTR, EAGAIN,
#                 ENOSPC/EIO at block K); the bad-CLI table; -a on a simulated
#                 sysfs; a writeback error on a loop device; real resets and
#                 silent drops between two network namespaces (tests/netns.sh).
#                 The root-only parts say "skipped" without root.
#   make test-stress  concurrent local and loopback transfers (sizes x workers
#                 x block sizes x levels), kill -9 of either end at seeded
#                 random moments (tests/stress.sh, STRESS_SEED, STRESS_KILLS),
#                 then ThreadSanitizer over the library tests when a nightly
#                 toolchain with rust-src is installed (says so when not)
#   make test-remote REMOTE=user@host[:port] [SSH_OPTS='-i key ...']
#                 the live -t matrix (tests/remote.sh) against a real SSH
#                 server; with the loopback sshd: REMOTE=$BSYNC_TEST_SSH
#                 SSH_OPTS="$SSH_OPTS"
#   make demo     sync a small real ext4 image with a modified copy of itself
#   make bench    cargo bench; bsync against the read floor, dd, and rsync over loopback
#                 (benches/cpu.sh: CPU beyond reading, against cat, and against
#                 another build with BSYNC_BASE;
#                 benches/ssh.sh: -t against rsync -e ssh, via a loopback sshd;
#                 benches/patch.sh: patch files against rsync batch files;
#                 benches/auto.sh: -auto against the defaults, on loopback and
#                 on a 100 Mbit/s veth between two network namespaces;
#                 benches/rescue.sh: -rescue on a healthy source, and on a
#                 failing one against ddrescue -d)
#   make fuzz     fuzz the wire codec, the patch decoder, the handshake proofs,
#                 the decompression bound and the frame opener for
#                 FUZZ_SECONDS per target, from the seed corpus in
#                 fuzz/corpus/ (needs cargo-fuzz)
#   make deny     licence, ban and source checks (needs cargo-deny)
#   make install  the binary, its manual page bsync.1 and bash/zsh/fish
#                 completions under PREFIX (/usr/local), staged in DESTDIR
#   make clean    remove build output

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO ?= cargo
TARGET := x86_64-unknown-linux-musl
TARGET_ENV := $(subst -,_,$(TARGET))
RELEASE_BIN := target/$(TARGET)/release/bsync

# Without musl-gcc, the host gcc compiles zstd-sys's C code for the musl
# target: zstd needs nothing from libc that glibc's headers and musl disagree
# on. -U_FORTIFY_SOURCE keeps distributions that enable fortification by
# default from pulling in glibc-only __*_chk symbols musl cannot provide.
ifeq ($(shell command -v musl-gcc 2>/dev/null),)
MUSL_CC_ENV := CC_$(TARGET_ENV)=$${CC_$(TARGET_ENV):-gcc} \
	CFLAGS_$(TARGET_ENV)="$${CFLAGS_$(TARGET_ENV):--U_FORTIFY_SOURCE}"
endif

# ChaCha20's AVX-512 backend halves what -K costs (benches/BENCHMARKS.md,
# "Encryption"). The crate keeps it behind a cfg; with it, the backend is
# still picked at run time (AVX-512, else AVX2, else SSE2), so the binary
# runs on any x86_64. Tests get it too, so that the RFC 8439 vectors check
# the code that ships.
RUSTFLAGS += --cfg chacha20_avx512
export RUSTFLAGS

.PHONY: all musl-target test test-fault test-stress test-remote demo bench fuzz deny clean install FORCE

all: bsync

musl-target:
	@if command -v rustup >/dev/null 2>&1 && \
	    ! rustup target list --installed | grep -x '$(TARGET)' >/dev/null; then \
		echo "rustup: adding target $(TARGET)"; \
		rustup target add $(TARGET); \
	fi

# Always ask cargo (it is incremental and knows the real dependencies), but
# replace ./bsync only when the build produced something new.
bsync: musl-target FORCE
	$(MUSL_CC_ENV) $(CARGO) build --release --locked --target $(TARGET)
	@cmp -s $(RELEASE_BIN) $@ || cp $(RELEASE_BIN) $@
	@desc="$$(file -b $@)"; \
	case "$$desc" in \
	*"statically linked"*|*"static-pie linked"*) echo "./bsync: $$desc" ;; \
	*) echo "error: ./bsync is not static: $$desc" >&2; rm -f $@; exit 1 ;; \
	esac

test:
	$(CARGO) fmt --check
	python3 tests/layers.py
	$(CARGO) clippy --locked --all-targets -- -D warnings
	cd fuzz && $(CARGO) test --locked
	$(CARGO) test --locked

# The relay cases mostly wait on deadlines, so they run many at a time.
test-fault: all
	$(CARGO) test --locked --lib -- session:: sys::file::tests::strict cli:: drives:: auth:: aead::tests::authenticate
	$(CARGO) test --locked --test fault -- --include-ignored --test-threads=8
	$(CARGO) test --locked --test cli
	$(CARGO) test --locked --test device measured_3
	tests/netns.sh ./bsync

STRESS_SEED ?= 13
STRESS_KILLS ?= 12
TSAN_TOOLCHAIN ?= nightly
test-stress: all
	tests/stress.sh ./bsync $(STRESS_SEED) $(STRESS_KILLS)
	@if $(CARGO) +$(TSAN_TOOLCHAIN) --version >/dev/null 2>&1 && \
	    [ -d "$$(rustc +$(TSAN_TOOLCHAIN) --print sysroot)/lib/rustlib/src/rust/library" ]; then \
		echo "ThreadSanitizer: library tests under $(TSAN_TOOLCHAIN) with -Zbuild-std"; \
		RUSTFLAGS='-Zsanitizer=thread --cfg chacha20_avx512' RUSTDOCFLAGS='-Zsanitizer=thread' \
		TSAN_OPTIONS='halt_on_error=1' CARGO_TARGET_DIR=target/tsan \
		$(CARGO) +$(TSAN_TOOLCHAIN) test -Zbuild-std --locked --target x86_64-unknown-linux-gnu --lib -- session:: pool::; \
	else \
		echo "ThreadSanitizer: skipped, no $(TSAN_TOOLCHAIN) toolchain with rust-src" \
		     "(rustup toolchain install $(TSAN_TOOLCHAIN) --component rust-src)"; \
	fi

# SSH_OPTS reaches tests/remote.sh through the environment, quotes and all.
export SSH_OPTS REMOTE
test-remote: all
	@[ -n "$(REMOTE)" ] || { echo "usage: make test-remote REMOTE=user@host[:port] [SSH_OPTS='-i key ...']" >&2; exit 2; }
	tests/remote.sh "$$REMOTE"

demo: all
	benches/demo.sh

bench: all
	$(CARGO) bench --locked
	benches/sync.sh
	benches/io.sh
	benches/net.sh
	benches/delay.sh
	benches/cpu.sh
	benches/seal.sh
	benches/ssh.sh
	benches/patch.sh
	benches/auto.sh
	benches/rescue.sh

# cargo-fuzz wants nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# (the only one this project assumes) accept them.
FUZZ_SECONDS ?= 60
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || \
		{ echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked"; exit 1; }
	cd fuzz && for target in decode round_trip patch handshake decompress open; do \
		mkdir -p ../target/fuzz-corpus/$$target; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target ../target/fuzz-corpus/$$target corpus/$$target \
			-- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

deny:
	@if $(CARGO) deny --version >/dev/null 2>&1; then \
		$(CARGO) deny check licenses bans sources; \
	else \
		echo "cargo-deny is not installed: cargo install cargo-deny --locked"; \
		exit 1; \
	fi

# The manual page and the completions come out of the binary itself
# (`--help-man`, `--completions SHELL`), made from the same text as -h.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR := $(DESTDIR)$(PREFIX)/bin
MAN1DIR := $(DESTDIR)$(PREFIX)/share/man/man1
BASHDIR := $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR := $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR := $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
install: all
	install -d '$(BINDIR)' '$(MAN1DIR)' '$(BASHDIR)' '$(ZSHDIR)' '$(FISHDIR)'
	install -m 755 bsync '$(BINDIR)/bsync'
	./bsync --help-man > '$(MAN1DIR)/bsync.1'
	./bsync --completions bash > '$(BASHDIR)/bsync'
	./bsync --completions zsh > '$(ZSHDIR)/_bsync'
	./bsync --completions fish > '$(FISHDIR)/bsync.fish'
	chmod 644 '$(MAN1DIR)/bsync.1' '$(BASHDIR)/bsync' '$(ZSHDIR)/_bsync' '$(FISHDIR)/bsync.fish'

clean:
	$(CARGO) clean
	rm -f bsync

FORCE:
