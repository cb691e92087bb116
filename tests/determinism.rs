//! Evaluation never depends on the order files are enumerated in, nor on
//! the order tables are written inside a file: the same modules in any
//! order give byte-identical `--json` output and identical diagnostics.

use std::path::PathBuf;

use kiln::config::Repo;
use kiln::eval::Evaluator;
use proptest::prelude::*;

/// A small deterministic generator (xorshift64*), so a proptest seed
/// describes a whole fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// One file: its path and its sections (joined in the order given).
struct File {
    path: String,
    sections: Vec<String>,
}

fn fleet(seed: u64) -> Vec<File> {
    let mut rng = Rng(seed | 1);
    let modules = 3 + rng.below(8);
    let mut files = vec![File {
        path: "images/base.toml".into(),
        sections: vec![
            "[image]\nformats = [\"lxc\", \"vm\"]\nbase.debian = { suite = \"bookworm\" }\n".into(),
        ],
    }];
    for i in 0..modules {
        let imports: Vec<String> = (0..i)
            .filter(|_| rng.below(3) == 0)
            .map(|j| format!("\"m{j}\""))
            .collect();
        let mut sections = vec![
            format!(
                "[module]\ndescription = \"m{i}\"\nimports = [{}]\n",
                imports.join(", ")
            ),
            format!(
                "[options.m{i}.items]\ntype = \"list<string>\"\ndefault = []\ndescription = \"items\"\n"
            ),
            format!(
                "[options.m{i}.label]\ntype = \"string\"\ndefault = \"m{i}-${{hostname}}\"\ndescription = \"label\"\n"
            ),
            format!(
                "[options.m{i}.port]\ntype = \"port\"\ndefault = {}\ndescription = \"port\"\n",
                1000 + i
            ),
        ];
        let mut config =
            format!("[config]\npackages = [\"pkg-{i}\", \"shared\"]\nm{i}.items = [\"own-{i}\"]\n");
        // Sometimes a module competes for a scalar: a conflict or an agreement.
        if rng.below(4) == 0 {
            config.push_str(&format!("timezone = \"Zone/{}\"\n", rng.below(2)));
        }
        // Sometimes a module declares an option another module already
        // declared: which one is "first" must not depend on file order.
        if i > 0 && rng.below(5) == 0 {
            let other = rng.below(i);
            sections.push(format!(
                "[options.m{other}.label]\ntype = \"string\"\ndescription = \"again\"\n"
            ));
        }
        if rng.below(3) == 0 {
            sections.push(format!(
                "[defaults]\nlocale = \"C.UTF-8\"\nsysctl.\"k{i}\" = \"{i}\"\n"
            ));
        }
        sections.push(config);
        sections.push(format!(
            "[config.files.\"/etc/m{i}.conf\"]\ntext = \"port=${{m{i}.port}} ${{m{i}.label}}\\n\"\n"
        ));
        files.push(File {
            path: format!("modules/m{i}.toml"),
            sections,
        });
    }
    for h in 0..(1 + rng.below(6)) {
        let imports: Vec<usize> = (0..modules).filter(|_| rng.below(2) == 0).collect();
        let quoted: Vec<String> = imports.iter().map(|m| format!("\"m{m}\"")).collect();
        let mut sections = vec![format!(
            "[host]\nkind = \"{}\"\nimage = \"base\"\nnode = \"pve{}\"\nvmid = {}\nimports = [{}]\n",
            if rng.below(2) == 0 { "lxc" } else { "vm" },
            rng.below(2),
            100 + h * 10 + rng.below(2),
            quoted.join(", ")
        )];
        if let Some(m) = imports.first() {
            sections.push(format!("[force]\nm{m}.port = {}\n", 2000 + rng.below(100)));
            sections.push(format!(
                "[config]\nm{m}.items = [\"host-{h}\"]\nproxmox.tags = [\"t{h}\"]\n"
            ));
        }
        files.push(File {
            path: format!("hosts/h{h}.toml"),
            sections,
        });
    }
    files
}

/// What an evaluation produced: every diagnostic rendered, every
/// diagnostic's code and message, and every host spec as JSON.
#[derive(Debug, PartialEq)]
struct Outcome {
    rendered: String,
    problems: Vec<(String, String)>,
    specs: String,
}

/// Evaluate the fleet with files and sections in the given orders.
fn evaluate(files: &[File], order: &[usize], section_orders: &[Vec<usize>]) -> Outcome {
    let inputs: Vec<(String, Vec<u8>)> = order
        .iter()
        .map(|&i| {
            let file = &files[i];
            // The header must stay first only by convention; any order is valid TOML
            // as long as each section is a complete table.
            let text: String = section_orders[i]
                .iter()
                .map(|&s| file.sections[s].as_str())
                .collect::<Vec<_>>()
                .join("\n");
            (file.path.clone(), text.into_bytes())
        })
        .collect();
    let evaluator = Evaluator::new(Repo::from_files(PathBuf::from("/fleet"), inputs));
    let report = kiln::ops::check(&evaluator);
    let mut outcome = Outcome {
        rendered: String::new(),
        problems: Vec::new(),
        specs: String::new(),
    };
    for diagnostic in &report.diagnostics {
        outcome.rendered.push_str(&kiln::config::diagnostic::render(
            diagnostic,
            &evaluator.repo.sources,
            false,
        ));
        outcome
            .problems
            .push((diagnostic.code.to_owned(), diagnostic.message.clone()));
    }
    outcome.problems.sort();
    for id in evaluator
        .repo
        .of_kind(kiln::config::DocKind::Host)
        .collect::<Vec<_>>()
    {
        if let Ok(spec) = evaluator.host(id) {
            outcome
                .specs
                .push_str(&serde_json::to_string_pretty(&spec).unwrap());
        }
    }
    outcome
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn evaluation_is_independent_of_enumeration_order(fleet_seed in any::<u64>(), order_seed in any::<u64>()) {
        let files = fleet(fleet_seed);
        let natural: Vec<usize> = (0..files.len()).collect();
        let natural_sections: Vec<Vec<usize>> = files.iter().map(|f| (0..f.sections.len()).collect()).collect();
        let expected = evaluate(&files, &natural, &natural_sections);

        prop_assert!(!expected.specs.is_empty() || !expected.problems.is_empty());

        // Files enumerated in another order: byte-identical, diagnostics included.
        let mut rng = Rng(order_seed | 1);
        let mut order = natural.clone();
        rng.shuffle(&mut order);
        let reordered = evaluate(&files, &order, &natural_sections);
        prop_assert_eq!(&expected, &reordered);

        // Tables also written in another order inside each file: the same
        // specs and the same problems (only line numbers may move).
        let mut sections = natural_sections.clone();
        for s in &mut sections {
            rng.shuffle(s);
        }
        let rewritten = evaluate(&files, &order, &sections);
        prop_assert_eq!(&expected.specs, &rewritten.specs);
        prop_assert_eq!(&expected.problems, &rewritten.problems);
    }
}
