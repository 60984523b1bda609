import { chmodSync, mkdirSync, readFileSync, statSync, existsSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import { writeFileAtomicSync } from "../host/files.js";

/**
 * The state directory: what must survive between builds (the CA, the server
 * certificate, generated secrets, cached hashes, build timings). It lives on
 * the build host and never enters the image. Files are 0600, directories 0700.
 */
export class StateDir {
  constructor(readonly dir: string) {}

  /** `<config dir>/.pibake/<image name>/` unless the user names another. */
  static locate(configDir: string, imageName: string, override?: string): StateDir {
    return new StateDir(path.resolve(override ?? path.join(configDir, ".pibake", imageName)));
  }

  ensure(): void {
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      chmodSync(this.dir, 0o700);
    } catch (err) {
      throw new PibakeError(`cannot create the state directory ${this.dir}: ${(err as Error).message}`);
    }
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  has(name: string): boolean {
    return existsSync(this.file(name));
  }

  read(name: string): string | undefined {
    try {
      return readFileSync(this.file(name), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new PibakeError(`cannot read ${this.file(name)}: ${(err as Error).message}`);
    }
  }

  readJson<T>(name: string): T | undefined {
    const text = this.read(name);
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new PibakeError(`${this.file(name)} is not valid JSON: remove it and pibake will make it again`);
    }
  }

  /** Written to a temporary name and renamed, so that an interrupted write never leaves half a key. */
  write(name: string, data: string): void {
    this.ensure();
    writeFileAtomicSync(this.file(name), data, 0o600);
  }

  writeJson(name: string, value: unknown): void {
    this.write(name, JSON.stringify(value, null, 2) + "\n");
  }

  /** Modes looser than 0600 on a key are reported, since another user could have read it. */
  looseFiles(names: string[]): string[] {
    return names.filter((n) => this.has(n) && (statSync(this.file(n)).mode & 0o077) !== 0);
  }
}
