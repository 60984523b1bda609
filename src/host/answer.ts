/**
 * The answer of a script pibake runs on the Pi (stages/push/inspect.sh,
 * stages/check/facts.sh): one record per line, its fields split at tabs, the
 * kind first, and a last line `end` that says nothing was cut off. Lines of
 * other kinds (a login banner, sudo's own words) are for the caller to ignore.
 */
export function answerRecords(output: string): { records: [kind: string, fields: string[]][]; ended: boolean } {
  const records: [string, string[]][] = [];
  let ended = false;
  for (const line of output.split("\n")) {
    if (line === "") continue;
    const [kind = "", ...fields] = line.split("\t");
    if (kind === "end") ended = true;
    else records.push([kind, fields]);
  }
  return { records, ended };
}
